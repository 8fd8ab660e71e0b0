"""Where each dataset's files lie under a data root, and what to say when they are not there. Torch-free, so that
`smx submit` can check a spec's data before it queues anything, without loading a model's worth of imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from smx.errors import UserError
from smx.paths import expand_home

Split = Literal["train", "test"]

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
        if download or find_idx_files(name, split, root) is not None:
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
