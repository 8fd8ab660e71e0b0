import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from smx.science.data import DataError, ImageTensors, data_root, load_dataset, random_crop_flip, read_idx
from smx.science.methods.params import GaussianParams
from smx.science.training import TrainSettings, batches


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as file:
            file.write(content)
    else:
        path.write_bytes(content)


def write_idx_split(folder, prefix, count, compress, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28))
    labels = rng.integers(0, 10, size=count)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


def test_mnist_mini_has_a_fixed_stratified_split():
    train = load_dataset("mnist-mini", "train")
    test = load_dataset("mnist-mini", "test")
    assert isinstance(train, ImageTensors)
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 400))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 100))
    assert 0.0 == train.images.min() and train.images.max() == 1.0
    # Shuffled: the first hundred test digits are not a single class, unlike the sorted source.
    assert len(torch.unique(test.labels[:100])) == 10
    train_rows = {row.numpy().tobytes() for row in train.images.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in test.images.flatten(1))
    assert torch.equal(load_dataset("mnist-mini", "test").labels, test.labels)


@pytest.mark.parametrize("asked, held", [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")])
@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_a_root_that_holds_the_other_of_mnist_and_fashion_mnist_is_refused(tmp_path, asked, held, split, prefix):
    from smx.science.data_files import FIRST_LABELS

    labels = np.array([*FIRST_LABELS[held][split], 3, 3])
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((len(labels), 28, 28)), compress=True)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, compress=True)
    with pytest.raises(DataError, match=f"holds the {split} split of {held}, not of {asked}"):
        load_dataset(asked, split, root=tmp_path)
    assert torch.equal(load_dataset(held, split, root=tmp_path).labels, torch.from_numpy(labels))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("layout", ["torchvision", "torchvision-gz", "debian-flat", "debian-subfolder"])
def test_idx_datasets_load_from_every_layout(tmp_path, name, folder, layout):
    files = {
        "torchvision": (tmp_path / folder / "raw", False),
        "torchvision-gz": (tmp_path / folder / "raw", True),
        "debian-flat": (tmp_path, True),
        "debian-subfolder": (tmp_path / name, True),
    }
    where, compress = files[layout]
    train_images, train_labels = write_idx_split(where, "train", 6, compress, seed=1)
    test_images, test_labels = write_idx_split(where, "t10k", 4, compress, seed=2)

    train = load_dataset(name, "train", root=tmp_path)
    test = load_dataset(name, "test", root=tmp_path)

    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert torch.equal(train.labels, torch.from_numpy(train_labels))
    assert torch.equal(test.labels, torch.from_numpy(test_labels))
    for split, images in ((train, train_images), (test, test_images)):
        assert torch.allclose(split.images[:, 0] * 255, torch.from_numpy(images).float())


def test_a_truncated_idx_file_is_a_data_error(tmp_path):
    images, _ = write_idx_split(tmp_path, "t10k", 3, compress=False, seed=0)
    path = tmp_path / "t10k-images-idx3-ubyte"
    assert read_idx(path).shape == images.shape
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated.*data.download = true"):
        read_idx(path)


def test_an_idx_file_cut_inside_its_header_is_a_data_error(tmp_path):
    write_idx_split(tmp_path, "t10k", 3, compress=False, seed=0)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError, match="ends inside its header.*truncated"):
        read_idx(path)


def test_idx_images_of_another_size_or_labels_of_no_class_are_data_errors_naming_the_file(tmp_path):
    write_idx_split(tmp_path, "t10k", 4, compress=False, seed=0)
    labels_path = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(labels_path, np.array([3, 1, 42, 26]), compress=False)  # e.g. EMNIST letters' labels
    with pytest.raises(DataError) as raised:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(raised.value).startswith(f"{labels_path}: label 42 of item 2 (and 1 more) is no class of mnist, "
                                        "whose classes are 0 to 9.")
    write_idx(labels_path, np.array([3, 1, 4, 1]), compress=False)
    images_path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(images_path, np.zeros((4, 32, 32)), compress=False)
    with pytest.raises(DataError, match="holds 32x32 images, where mnist's are 28x28"):
        load_dataset("mnist", "test", root=tmp_path)


def test_a_damaged_gzip_idx_file_is_a_data_error_that_says_how_to_fetch_it_again(tmp_path):
    write_idx_split(tmp_path / "MNIST" / "raw", "t10k", 3, compress=True, seed=0)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    compressed = gzip.compress(gzip.decompress(path.read_bytes()), mtime=0)  # no file name: the data start at 10
    # Cut short (an interrupted download: gzip's EOFError), then a deflate block of the reserved type (zlib.error).
    invalid_block = compressed[:10] + b"\xff" + compressed[11:]
    for content in (compressed[: len(compressed) // 2], invalid_block):
        path.write_bytes(content)
        with pytest.raises(DataError) as raised:
            load_dataset("mnist", "test", root=tmp_path)
        message = str(raised.value)
        assert str(path) in message and "damaged gzip file" in message
        assert "delete it and set data.download = true" in message


def test_a_truncated_cifar10_batch_is_a_data_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    entry = {"batch_label": "test", "labels": [1, 2], "data": np.zeros((2, 3072), dtype=np.uint8)}
    content = pickle.dumps(entry, protocol=2)
    for cut in (0, len(content) // 2):
        (folder / "test_batch").write_bytes(content[:cut])
        with pytest.raises(DataError) as raised:
            load_dataset("cifar10", "test", root=tmp_path)
        assert str(folder / "test_batch") in str(raised.value) and "data.download = true" in str(raised.value)


def write_cifar10_test_batch(root, labels, images=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    data = np.zeros((len(labels), 3072), dtype=np.uint8) if images is None else images
    with (folder / "test_batch").open("wb") as file:
        pickle.dump({"batch_label": "test", "labels": labels, "data": data}, file, protocol=2)
    return folder / "test_batch"


def test_a_cifar10_batch_with_labels_of_no_class_or_a_label_per_image_missing_is_a_data_error(tmp_path):
    path = write_cifar10_test_batch(tmp_path, [1, 10, 2])
    with pytest.raises(DataError, match=f"^{path}: label 10 of item 1 \\(and 0 more\\) is no class of cifar10"):
        load_dataset("cifar10", "test", root=tmp_path)
    write_cifar10_test_batch(tmp_path, [1, 2], images=np.zeros((3, 3072), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch .*3 images but labels of shape \\(2,\\)"):
        load_dataset("cifar10", "test", root=tmp_path)


def write_imagenet_folder(folder, classes):
    for label in classes:
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (300, 260), color=(255, 0, 0)).save(folder / label / "a.png")


def test_imagenet_validation_classes_keep_the_numbers_training_gave_them(tmp_path):
    write_imagenet_folder(tmp_path / "imagenet" / "train", ["n01", "n02", "n03"])
    write_imagenet_folder(tmp_path / "imagenet" / "val", ["n01", "n03"])  # no n02
    validation = load_dataset("imagenet", "test", root=tmp_path)
    assert [label for _, label in validation.samples] == [0, 2] and validation.targets == [0, 2]
    assert validation[1][1] == 2 and validation.classes == ["n01", "n02", "n03"]
    write_imagenet_folder(tmp_path / "imagenet" / "val", ["n04"])
    with pytest.raises(DataError, match="has class folders that .*train has not: n04"):
        load_dataset("imagenet", "test", root=tmp_path)


def write_imagenet_with_a_truncated_image(root):
    """Two class folders of one PNG each under root/imagenet/val; the second class's image is cut short."""
    for label in ("cat", "dog"):
        (root / "imagenet" / "val" / label).mkdir(parents=True)
        Image.new("RGB", (300, 260), color=(255, 0, 0)).save(root / "imagenet" / "val" / label / "a.png")
    damaged = root / "imagenet" / "val" / "dog" / "a.png"
    damaged.write_bytes(damaged.read_bytes()[:200])
    return damaged


def test_a_damaged_imagenet_image_is_a_data_error_naming_it(tmp_path):
    damaged = write_imagenet_with_a_truncated_image(tmp_path)
    dataset = load_dataset("imagenet", "test", root=tmp_path)
    assert dataset[0][0].shape == (3, 224, 224)
    with pytest.raises(DataError, match="cannot read image .*a.png.*Fix: replace it") as raised:
        dataset[1]
    assert str(damaged) in str(raised.value)


def test_a_damaged_image_read_by_a_dataloader_worker_is_a_plain_data_error(tmp_path):
    damaged = write_imagenet_with_a_truncated_image(tmp_path)
    dataset = load_dataset("imagenet", "test", root=tmp_path)
    settings = TrainSettings(method="gaussian", params=GaussianParams(), sigma=0.5, epochs=1, batch_size=2, lr=0.1,
                             lr_step=1, lr_gamma=0.1, momentum=0.9, weight_decay=0.0, seed=0, dataset="imagenet",
                             num_workers=1)
    with pytest.raises(DataError) as raised:
        list(batches(dataset, settings, torch.Generator().manual_seed(0), torch.device("cpu")))
    # The message alone, not torch's "Caught DataError in DataLoader worker process 0" and the worker's traceback.
    assert str(raised.value).startswith(f"cannot read image {damaged}")
    assert "Traceback" not in str(raised.value)


def test_cifar10_loads_the_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for batch in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=3)]
        written[batch] = (data, labels)
        names = [f"{batch}_{index}.png" for index in range(3)]
        entry = {"batch_label": batch, "labels": labels, "data": data, "filenames": names}
        with (folder / batch).open("wb") as file:
            pickle.dump(entry, file, protocol=2)

    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)

    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert test.labels.tolist() == written["test_batch"][1]
    # Rows are channel-major: the first 1024 bytes are the red plane.
    red_plane = torch.from_numpy(written["test_batch"][0][0, :1024].reshape(32, 32)).float() / 255
    assert torch.equal(test.images[0, 0], red_plane)


def test_imagenet_reads_class_folders_with_the_test_transform(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "imagenet" / "val" / label).mkdir(parents=True)
        Image.new("RGB", (300, 260), color=(255, 0, 0)).save(tmp_path / "imagenet" / "val" / label / "a.png")
    dataset = load_dataset("imagenet", "test", root=tmp_path)
    image, label = dataset[1]
    assert image.shape == (3, 224, 224) and label == 1
    assert image[0].min() == 1.0 and image[1:].max() == 0.0


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "imagenet"])
def test_missing_data_is_a_data_error_that_says_where_and_how(tmp_path, name):
    with pytest.raises(DataError) as raised:
        load_dataset(name, "test", root=tmp_path / "empty")
    message = str(raised.value)
    assert str(tmp_path / "empty") in message
    assert "data.root" in message and "SMX_DATA" in message
    if name in ("mnist", "fashion-mnist"):
        assert "t10k-images-idx3-ubyte" in message and "data.download = true" in message
    if name == "cifar10":
        assert "test_batch" in message


def test_data_root_comes_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SMX_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("SMX_DATA")
    assert data_root().name == "data" and data_root().parent.name == ".smx"


def test_random_crop_flip_is_a_padded_crop_then_maybe_a_flip():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 32, 32) + 1.0  # nonzero everywhere, so every candidate below is distinct
    augmented = random_crop_flip(images)
    chosen = set()
    for original, result in zip(images, augmented):
        padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
        crops = {(top, left): padded[:, top : top + 32, left : left + 32] for top in range(9) for left in range(9)}
        candidates = {(*offset, 0): crop for offset, crop in crops.items()}
        candidates.update({(*offset, 1): crop.flip(2) for offset, crop in crops.items()})
        matches = [key for key, candidate in candidates.items() if torch.equal(result, candidate)]
        assert len(matches) == 1
        chosen.add(matches[0])
    assert {flip for _, _, flip in chosen} == {0, 1}
    assert len({(top, left) for top, left, _ in chosen}) > 20
