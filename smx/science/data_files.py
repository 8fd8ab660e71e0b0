"""Where each dataset's files lie under a data root, what they must hold, and what to say when they are not there or
do not hold it. Torch-free, so that `smx submit` can check a spec's data before it queues anything, without loading a
model's worth of imports.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from smx.errors import UserError
from smx.paths import expand_home
from smx.science.catalog import DATASETS, Split


# File names of the MNIST-like datasets, and the folder torchvision downloads each into (root/<folder>/raw).
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES: dict[str, list[str]] = {
    "train": [f"data_batch_{index}" for index in range(1, 6)],
    "test": ["test_batch"],
}


class DataError(UserError):
    """A dataset that cannot be found or read; the message says where smx looked and how to fix it."""


# What to do about a damaged file of a dataset torchvision can download. Deleting it matters: smx downloads only
# files that are missing, and torchvision skips a download whose files are there.
REFETCH_FIX = ("Fix: delete it and set data.download = true, so that torchvision fetches it again, or put the "
               "original file in its place")


# The first labels of each official split. MNIST and Fashion-MNIST ship files of the same names, shapes and sizes,
# so a data root that holds the other one would otherwise be trained and certified on without a word.
FIRST_LABELS = {
    "mnist": {"train": (5, 0, 4, 1, 9, 2, 1, 3, 1, 4), "test": (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)},
    "fashion-mnist": {"train": (9, 0, 0, 3, 0, 2, 7, 2, 5, 5), "test": (9, 2, 1, 1, 6, 1, 4, 6, 5, 7)},
}


def _read(path: Path, size: int = -1) -> bytearray:
    """The first `size` bytes of a file (all with -1), gzip-decompressed when the name ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            # A bytearray, unlike bytes, gives a writable array that torch can wrap without copying.
            return bytearray(file.read(size))
    # gzip reports a truncated file as EOFError and damaged compressed data as zlib.error, neither an OSError;
    # a bad header or checksum is a BadGzipFile, which is one.
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"{path} is a damaged gzip file ({error}), probably an interrupted download. "
                        f"{REFETCH_FIX}") from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from error


def _idx_header(content: bytearray, path: Path, file_size: int | None) -> tuple[tuple[int, ...], int]:
    """The shape and header size of IDX content that begins a file of `file_size` bytes (None: not known), which
    must be the size the header announces."""
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file. {REFETCH_FIX}")
    ndim = content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{path} ends inside its header ({len(content)} bytes): it is truncated. {REFETCH_FIX}")
    shape = tuple(int(size) for size in np.frombuffer(bytes(content[4:header_size]), dtype=">u4"))
    expected = header_size + int(np.prod(shape))
    if file_size is not None and file_size != expected:
        raise DataError(f"{path} holds {file_size} bytes but its header announces {expected}: it is truncated. "
                        f"{REFETCH_FIX}")
    return shape, header_size


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST file format), gzip-compressed when the name ends in .gz."""
    content = _read(path)
    shape, header_size = _idx_header(content, path, len(content))
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def idx_shape(path: Path) -> tuple[int, ...]:
    """The shape an IDX file's header announces, reading the header alone; an uncompressed file's size must be the
    size it announces (a compressed one's is known only once it is read whole)."""
    return _idx_header(_read(path, 4 + 4 * 255), path, None if path.suffix == ".gz" else path.stat().st_size)[0]


def check_idx_split(name: str, split: Split, images_path: Path, images_shape: tuple[int, ...], labels_path: Path,
                    labels: np.ndarray) -> None:
    """A DataError naming the file and the fix where an IDX split is not one of `name`'s: images and labels that do
    not match, images of another size, labels of no class, or the labels of the other of MNIST and Fashion-MNIST."""
    if len(images_shape) != 3 or labels.ndim != 1 or images_shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} {images_shape} and {labels_path} {labels.shape} are not matching images and labels"
        )
    height_width = DATASETS[name].input_shape[1:]
    if images_shape[1:] != height_width:
        raise DataError(f"{images_path} holds {images_shape[1]}x{images_shape[2]} images, where {name}'s are "
                        f"{height_width[0]}x{height_width[1]}. Fix: point data.root (or SMX_DATA) at a folder that "
                        f"holds {name}.")
    check_labels(labels, name, labels_path)
    for other, first_labels in FIRST_LABELS.items():
        if other != name and tuple(labels[:10].tolist()) == first_labels[split]:
            raise DataError(f"{labels_path} holds the {split} split of {other}, not of {name} (its first labels are "
                            f"{other}'s). Fix: point data.root (or SMX_DATA) at a folder that holds {name}.")


def idx_split_problem(name: str, split: Split, images_path: Path, labels_path: Path) -> str | None:
    """What `check_idx_split` would refuse in these files, read cheaply enough for `smx submit`'s check: the images'
    header and the labels; None when nothing. (Damage past the images' header shows when a job reads them.)"""
    try:
        check_idx_split(name, split, images_path, idx_shape(images_path), labels_path, read_idx(labels_path))
    except DataError as error:
        return error.message
    return None


def check_labels(labels: np.ndarray, name: str, path: Path) -> None:
    """A DataError naming the file and the first label that is no class of the dataset: a test label out of range
    would be certified as a wrong prediction, and a training one fail deep inside the loss."""
    num_classes = DATASETS[name].num_classes
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if outside.size:
        first = int(outside[0])
        raise DataError(f"{path}: label {int(labels[first])} of item {first} (and {outside.size - 1} more) is no class "
                        f"of {name}, whose classes are 0 to {num_classes - 1}. Fix: point data.root (or SMX_DATA) at "
                        f"a folder that holds {name}, or fetch its files again.")


def data_root(root: Path | str | None = None) -> Path:
    """Where datasets live: the argument, else $SMX_DATA, else ~/.smx/data."""
    if root is not None:
        return expand_home(root, "data.root")
    if os.environ.get("SMX_DATA"):
        return expand_home(os.environ["SMX_DATA"], "SMX_DATA")
    return Path.home() / ".smx" / "data"


def idx_candidates(name: str, root: Path, file_name: str) -> list[Path]:
    """Where an IDX file may lie: torchvision's layout first, then the flat layout of Debian's dataset packages."""
    folders = [root / TORCHVISION_FOLDERS[name] / "raw", root / name, root]
    return [folder / candidate for folder in folders for candidate in (file_name, file_name + ".gz")]


def find_idx_files(name: str, split: Split, root: Path) -> tuple[Path, Path] | None:
    found = []
    for file_name in IDX_FILES[split]:
        existing = [path for path in idx_candidates(name, root, file_name) if path.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found[0], found[1]


def imagenet_folders(split: Split, root: Path) -> list[Path]:
    """Where an ImageNet split's class folders may lie, in the order they are looked for."""
    folder_name = "train" if split == "train" else "val"
    return [root / "imagenet" / folder_name, root / folder_name]


def missing_files_message(name: str, split: Split, root: Path, download: bool) -> str | None:
    """Why one split of a dataset cannot be loaded from `root` without the network, or None when it can be
    (or when `download` will fetch it: only torchvision's datasets can be downloaded)."""
    if name in TORCHVISION_FOLDERS:
        paths = find_idx_files(name, split, root)
        if paths is not None:
            return idx_split_problem(name, split, *paths)
        if download:
            return None
        images_file, labels_file = IDX_FILES[split]
        return (
            f"the {split} split of {name} is not under data root {root}: expected {images_file} and {labels_file} "
            f"(or the same names with .gz) in {root / TORCHVISION_FOLDERS[name] / 'raw'} (torchvision's layout), "
            f"in {root / name} or directly in {root} (the layout of Debian's dataset packages"
            f"{', e.g. /usr/share/datasets/fashion-mnist' if name == 'fashion-mnist' else ''}). MNIST and "
            f"Fashion-MNIST use the same file names: make sure the folder holds {name}. "
            f"Fix: set data.root (or the SMX_DATA environment variable) "
            f"to the folder that holds them, or set data.download = true to fetch them with torchvision"
        )
    if name == "cifar10":
        folder = root / CIFAR_FOLDER
        missing = [batch for batch in CIFAR_BATCHES[split] if not (folder / batch).is_file()]
        if download or not missing:
            return None
        return (
            f"the {split} split of cifar10 is not under data root {root}: expected {', '.join(missing)} in {folder} "
            f"(the python version of CIFAR-10, as torchvision downloads it). Fix: set data.root (or the SMX_DATA "
            f"environment variable) to the folder that contains {CIFAR_FOLDER}, or set data.download = true"
        )
    if name == "imagenet":
        candidates = imagenet_folders(split, root)
        if any(folder.is_dir() for folder in candidates):
            return None
        return (
            f"the {split} split of imagenet is not under data root {root}: expected one folder per class in "
            f"{candidates[0]} or {candidates[1]}. ImageNet cannot be downloaded automatically"
            f"{' (data.download = true does not apply)' if download else ''}; fetch it from image-net.org, "
            f"arrange it as class folders, and set data.root (or the SMX_DATA environment variable)"
        )
    return None  # mnist-mini ships with smx
