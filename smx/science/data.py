"""Datasets as images in [0, 1]: the embedded `mnist-mini`, MNIST-like IDX files, CIFAR-10 and ImageNet.

Small datasets load whole into an `ImageTensors`, so training can keep them on the GPU and gather batches by
index. ImageNet is a torchvision `ImageFolder` read through a DataLoader. Normalisation is never applied
here: it is the first layer of every model (see smx.science.models).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from smx.science.catalog import DATASETS
from smx.science.data_files import (
    CIFAR_BATCHES,
    CIFAR_FOLDER,
    REFETCH_FIX,
    TORCHVISION_FOLDERS,
    DataError,
    Split,
    check_idx_split,
    check_labels,
    data_root,
    find_idx_files,
    imagenet_folders,
    missing_files_message,
    read_idx,
)

# Imported only where a download or ImageNet needs it: torchvision's import (which brings torch._dynamo) adds
# about 2 s to every job process, most of which read in-memory datasets without it.
if TYPE_CHECKING:
    import PIL.Image
    import torchvision

# The torchvision dataset class that downloads each catalog dataset smx can download.
TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}

MNIST_MINI_PATH = Path(__file__).resolve().parent / "data" / "mnist_mini.npz"


@dataclass
class ImageTensors:
    """A whole dataset in memory: images (N, C, H, W) float32 in [0, 1] and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"images {tuple(self.images.shape)} and labels {tuple(self.labels.shape)} do not match")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> ImageTensors:
        return ImageTensors(self.images.to(device), self.labels.to(device))

    def subset(self, indices: torch.Tensor | list[int]) -> ImageTensors:
        index = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        return ImageTensors(self.images[index], self.labels[index])


def load_dataset(
    name: str, split: Split, root: Path | str | None = None, download: bool = False
) -> ImageTensors | torch.utils.data.Dataset:
    """One split of a catalog dataset. Only `download=True` reaches the network, through torchvision."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} in data.dataset; known: {', '.join(sorted(DATASETS))}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if name == "mnist-mini":
        return load_mnist_mini(split)
    folder = data_root(root)
    if name in TORCHVISION_FOLDERS:
        return load_idx_dataset(name, split, folder, download)
    if name == "cifar10":
        return load_cifar10(split, folder, download)
    return load_imagenet(split, folder, download)


def strided_indices(dataset_size: int, skip: int, max_samples: int | None) -> list[int]:
    """Every `skip`-th index of a dataset (the reference certify.py's --skip), at most `max_samples` of them."""
    indices = list(range(0, dataset_size, skip))
    return indices if max_samples is None else indices[:max_samples]


def images_and_labels(
    data: ImageTensors | torch.utils.data.Dataset, indices: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, C, H, W) and labels (N,) at `indices` of a dataset as load_dataset returns it."""
    if isinstance(data, ImageTensors):
        selected = data.subset(indices)
        return selected.images, selected.labels
    # A dataset read from disk yields (image, label) pairs one at a time.
    items = [data[index] for index in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def load_mnist_mini(split: Split) -> ImageTensors:
    with np.load(MNIST_MINI_PATH) as arrays:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    return from_uint8(images[:, None], labels)


def from_uint8(images: np.ndarray, labels: np.ndarray) -> ImageTensors:
    """uint8 images (N, C, H, W) and integer labels to an ImageTensors."""
    return ImageTensors(
        torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
    )


def load_idx_dataset(name: str, split: Split, root: Path, download: bool) -> ImageTensors:
    paths = find_idx_files(name, split, root)
    if paths is None and download:
        download_with_torchvision(name, split, root)
        paths = find_idx_files(name, split, root)
    if paths is None:
        raise DataError(missing_files_message(name, split, root, download=False))
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    check_idx_split(name, split, images_path, images.shape, labels_path, labels)
    return from_uint8(images[:, None], labels)


def load_cifar10(split: Split, root: Path, download: bool) -> ImageTensors:
    folder = root / CIFAR_FOLDER
    paths = [folder / batch for batch in CIFAR_BATCHES[split]]
    if not all(path.is_file() for path in paths) and download:
        download_with_torchvision("cifar10", split, root)
    if problem := missing_files_message("cifar10", split, root, download=False):
        raise DataError(problem)
    images, labels = [], []
    for path in paths:
        try:
            with path.open("rb") as file:
                batch = pickle.load(file, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
            if labels[-1].shape != (len(images[-1]),):
                raise ValueError(f"{len(images[-1])} images but labels of shape {labels[-1].shape}")
        # A truncated pickle raises UnpicklingError or EOFError; one that holds no batch KeyError, TypeError or
        # ValueError.
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"cannot read CIFAR-10 batch {path} ({type(error).__name__}: {error}), probably an "
                            f"interrupted download. {REFETCH_FIX}") from error
        check_labels(labels[-1], "cifar10", path)
    return from_uint8(np.concatenate(images), np.concatenate(labels))


def load_imagenet(split: Split, root: Path, download: bool) -> torchvision.datasets.ImageFolder:
    """ImageNet as class folders under root/imagenet/{train,val} or root/{train,val}; it is never downloaded."""
    existing = [folder for folder in imagenet_folders(split, root) if folder.is_dir()]
    if not existing:
        raise DataError(missing_files_message("imagenet", split, root, download))
    import torchvision
    from torchvision import transforms

    if split == "train":
        transform = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    try:
        folder = torchvision.datasets.ImageFolder(str(existing[0]), transform=transform, loader=read_image)
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"cannot read ImageNet folder {existing[0]}: {error}") from error
    num_classes = DATASETS["imagenet"].num_classes
    if len(folder.classes) > num_classes:
        raise DataError(f"{existing[0]} has {len(folder.classes)} class folders, more than ImageNet's {num_classes}. "
                        "Fix: point data.root (or SMX_DATA) at ImageNet.")
    if split != "train":
        _number_as_in_training(folder, root)
    return folder


def _number_as_in_training(folder: torchvision.datasets.ImageFolder, root: Path) -> None:
    """Give a validation folder's classes the numbers training gave them. ImageFolder numbers the class folders it
    finds in order, so a validation folder without one of the training folder's classes would shift the labels
    of every class after it."""
    training = next((candidate for candidate in imagenet_folders("train", root) if candidate.is_dir()), None)
    if training is None:
        return  # nothing to agree with: the numbers are the validation folder's own
    training_classes = sorted(entry.name for entry in training.iterdir() if entry.is_dir())
    number = {name: index for index, name in enumerate(training_classes)}
    unknown = [name for name in folder.classes if name not in number]
    if unknown:
        raise DataError(f"{folder.root} has class folders that {training} has not: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}. A model trained on {training} has no output for them. "
                        "Fix: give both folders the same classes.")
    folder.samples = [(path, number[folder.classes[target]]) for path, target in folder.samples]
    folder.imgs = folder.samples
    folder.targets = [target for _, target in folder.samples]
    folder.classes, folder.class_to_idx = training_classes, number


def read_image(path: str) -> PIL.Image.Image:
    """An image file as RGB, as ImageFolder's default loader reads it, or a DataError naming the file.

    ImageFolder opens its files only when an item is read, so a damaged one surfaces mid-run: PIL raises an
    OSError (UnidentifiedImageError, "image file is truncated") that would otherwise name no fix.
    """
    from torchvision.datasets.folder import pil_loader

    try:
        return pil_loader(path)
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error}. Fix: replace it with the original from ImageNet, "
                        f"or delete it") from error


def download_with_torchvision(name: str, split: Split, root: Path) -> None:
    import torchvision

    dataset = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        dataset(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError) as error:
        raise DataError(
            f"downloading {name} into {root} failed: {error}. Check the network, or place the files there by "
            f"hand and set data.download = false"
        ) from error


def random_crop_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """CIFAR training augmentation on a batch, on its own device: a random crop of the zero-padded image at
    the original size, then a horizontal flip with probability 1/2, independently per image."""
    count, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (count, 1), device=images.device)
    left = torch.randint(0, 2 * padding + 1, (count, 1), device=images.device)
    rows = (top + torch.arange(height, device=images.device)).view(count, 1, height, 1)
    columns = (left + torch.arange(width, device=images.device)).view(count, 1, 1, width)
    batch = torch.arange(count, device=images.device).view(count, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    cropped = padded[batch, channels, rows, columns]
    flip = torch.rand(count, device=images.device) < 0.5
    return torch.where(flip.view(count, 1, 1, 1), cropped.flip(3), cropped)


# Augmentations training applies on the device to a tensor dataset's batches; the rest are fed as they are.
TENSOR_AUGMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"cifar10": random_crop_flip}


def train_augmentation(dataset: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    return TENSOR_AUGMENTATIONS.get(dataset)
