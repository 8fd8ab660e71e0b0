"""Stability training (Li et al. 2019) as ported in jh-jeong/smoothing-consistency `train_stab.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smx.science.methods.base import StepContext, StepOutput, add_noise, draw_noise
from smx.science.methods.params import StabilityParams


def loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    context: StepContext[StabilityParams],
) -> StepOutput:
    """L = CE(f(x), y) + lbd * mean_i sum_c p_c(x_i) * -log p_c(x_i + delta_i), one noise draw per image.

    The cross-entropy is on the clean input. The soft target p(x) is not detached, so the regulariser,
    KL(p(x) || p(x + delta)) + H(p(x)), also trains the clean branch. Clean and noisy inputs go through the model
    in two train-mode forwards, so BatchNorm sees each batch on its own, as in the reference.
    """
    clean_logits = model(inputs)
    clean_loss = F.cross_entropy(clean_logits, targets)
    noisy_logits = model(add_noise(inputs, draw_noise(inputs, 1, sigma)))
    soft_cross_entropy = -(F.softmax(clean_logits, dim=1) * F.log_softmax(noisy_logits, dim=1)).sum(dim=1)
    stability_loss = soft_cross_entropy.mean()
    return StepOutput(
        loss=clean_loss + context.params.lbd * stability_loss,
        noisy_logits=noisy_logits,
        noisy_targets=targets,
        extras={"clean_loss": clean_loss.detach(), "stability_loss": stability_loss.detach()},
    )
