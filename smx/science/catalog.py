"""What datasets and architectures exist, and the paper's per-dataset training recipes. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "test"]


@dataclass(frozen=True)
class TrainRecipe:
    """The optimizer schedule the reference code uses for a dataset (SGD, momentum 0.9, StepLR gamma 0.1)."""

    lr: float
    epochs: int
    lr_step: int
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_gamma: float = 0.1


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    # Per-channel statistics applied by the model's first layer; None means identity (MNIST-like data).
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    recipe: TrainRecipe
    default_arch: str
    needs_root: bool
    test_images: int  # in the published test split (ImageNet's: its validation set), which certification logs index
    train_images: int

    def images_in(self, split: Split) -> int:
        return self.train_images if split == "train" else self.test_images


MNIST_RECIPE = TrainRecipe(lr=0.01, epochs=90, lr_step=30)
CIFAR_RECIPE = TrainRecipe(lr=0.1, epochs=150, lr_step=50)
IMAGENET_RECIPE = TrainRecipe(lr=0.1, epochs=90, lr_step=30)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    "mnist-mini": DatasetInfo("mnist-mini", 10, (1, 28, 28), None, None, MNIST_RECIPE, "lenet", needs_root=False,
                              test_images=1000, train_images=4000),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), None, None, MNIST_RECIPE, "lenet", needs_root=True,
                         test_images=10_000, train_images=60_000),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), None, None, MNIST_RECIPE, "lenet", needs_root=True,
                                 test_images=10_000, train_images=60_000),
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, CIFAR_RECIPE, "cifar_resnet110", needs_root=True,
        test_images=10_000, train_images=50_000,
    ),
    "imagenet": DatasetInfo(
        "imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, IMAGENET_RECIPE, "resnet50", needs_root=True,
        test_images=50_000, train_images=1_281_167,
    ),
}

# Which input shapes each architecture accepts (channels, height, width); None means any.
ARCHS: dict[str, tuple[int, int, int] | None] = {
    "lenet": (1, 28, 28),
    "cifar_resnet20": (3, 32, 32),
    "cifar_resnet110": (3, 32, 32),
    "resnet50": None,
}
