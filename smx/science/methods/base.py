"""The shared signature of training methods, the noise they draw, and the probability floor of their logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch

from smx.science.methods.params import MethodParams

ParamsT = TypeVar("ParamsT", bound=MethodParams)

# Floor of an averaged probability before its log, as in the references: a confidently wrong class keeps a finite loss.
MIN_PROBABILITY = 1e-20


@dataclass
class StepContext(Generic[ParamsT]):
    """What a method may know about where it is in training."""

    params: ParamsT
    epoch: int  # 0-based
    epochs: int
    num_classes: int


@dataclass
class StepOutput:
    loss: torch.Tensor
    # Train-mode logits on noisy inputs and their targets, for the "accuracy under noise" metric.
    noisy_logits: torch.Tensor
    noisy_targets: torch.Tensor
    # Per-step diagnostics the loop averages over an epoch. Detached 0-dim tensors are preferred to floats:
    # they keep the GPU asynchronous, as nothing waits for a value until the epoch ends.
    extras: dict[str, torch.Tensor | float] = field(default_factory=dict)


class LossFunction(Protocol):
    def __call__(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        sigma: float,
        context: StepContext,
    ) -> StepOutput: ...


def draw_noise(inputs: torch.Tensor, noise_samples: int, sigma: float) -> torch.Tensor:
    """`noise_samples` independent N(0, sigma^2 I) draws per image from the global torch RNG, stacked noise-major:
    shape (noise_samples, *inputs.shape)."""
    return torch.randn((noise_samples, *inputs.shape), device=inputs.device, dtype=inputs.dtype) * sigma


def add_noise(images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Each image plus each of its noise draws as one batch, noise-major: row j*b + i is images[i] + noise[j, i]."""
    return (images.unsqueeze(0) + noise).flatten(0, 1)
