"""Gaussian augmentation (Cohen et al. 2019): cross-entropy of the base classifier on noisy inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smx.science.methods.base import StepContext, StepOutput, add_noise, draw_noise
from smx.science.methods.params import GaussianParams


def loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    context: StepContext[GaussianParams],
) -> StepOutput:
    """Mean cross-entropy over `noise_samples` fresh noisy copies of every image, in one train-mode forward."""
    noise_samples = context.params.noise_samples
    noisy_targets = targets.repeat(noise_samples)
    logits = model(add_noise(inputs, draw_noise(inputs, noise_samples, sigma)))
    return StepOutput(loss=F.cross_entropy(logits, noisy_targets), noisy_logits=logits, noisy_targets=noisy_targets)
