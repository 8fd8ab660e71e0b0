"""The base classifiers: LeNet for MNIST-like data, CIFAR ResNets, and torchvision's ResNet-50.

Every model takes images in [0, 1] and starts with a `Normalize` layer, so that training and certification
add Gaussian noise in pixel space, where sigma and the certified radius are measured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from smx.errors import UserError
from smx.science.catalog import ARCHS, DATASETS


class Normalize(nn.Module):
    """Per-channel standardisation, (x - mean) / std, as the first layer of a model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def lenet(num_classes: int, in_channels: int = 1) -> nn.Sequential:
    """The MNIST LeNet of the SmoothMix reference: 431,080 parameters for 10 classes."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection; a 1x1 convolution matches shapes when they change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2): three stages of n BasicBlocks with widths 16, 32 and 64."""

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages = []
        in_channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for block in range(blocks_per_stage):
                stages.append(BasicBlock(in_channels, width, stride if block == 0 else 1))
                in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = self.stages(out)
        return self.fc(torch.flatten(self.pool(out), 1))


def cifar_resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(3, num_classes, in_channels)


def cifar_resnet110(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(18, num_classes, in_channels)


def resnet50(num_classes: int, in_channels: int = 3) -> nn.Module:
    # Imported here: torchvision's import adds about 2 s to every job process, and only this model needs it.
    import torchvision

    network = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        # The catalog lets ResNet-50 take any input, so grayscale data gets a stem of the right width.
        network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return network


BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "lenet": lenet,
    "cifar_resnet20": cifar_resnet20,
    "cifar_resnet110": cifar_resnet110,
    "resnet50": resnet50,
}


def build_model(arch: str, dataset: str) -> nn.Module:
    """A freshly initialised classifier for `dataset`: Normalize, then the network. Seed torch beforehand."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r} in data.dataset; known: {', '.join(sorted(DATASETS))}")
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r} in model.arch; known: {', '.join(sorted(ARCHS))}")
    info = DATASETS[dataset]
    accepted_shape = ARCHS[arch]
    if accepted_shape is not None and accepted_shape != info.input_shape:
        fitting = sorted(name for name, shape in ARCHS.items() if shape in (None, info.input_shape))
        raise UserError(
            f"model.arch = {arch!r} takes {'x'.join(map(str, accepted_shape))} images, but dataset {dataset!r} "
            f"has {'x'.join(map(str, info.input_shape))}; set model.arch to one of {', '.join(fitting)} "
            f"(the default for {dataset} is {info.default_arch!r})"
        )
    if arch not in BUILDERS:
        raise UserError(f"model.arch = {arch!r} is in the catalog but has no implementation in smx.science.models")
    channels = info.input_shape[0]
    network = BUILDERS[arch](info.num_classes, channels)
    if info.mean is None or info.std is None:
        # MNIST-like data is fed as is, like the reference; the layer stays so every model starts the same way.
        normalize = Normalize((0.0,) * channels, (1.0,) * channels)
    else:
        normalize = Normalize(info.mean, info.std)
    return nn.Sequential(normalize, network)
