"""SmoothAdv (Salman et al. 2019): training on PGD adversaries of the soft smoothed classifier, multi-noise, as in
the jh-jeong port `train_salman.py` of Hadisalman/smoothing-adversarial."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smx.science.methods.attacks import smoothadv_pgd, warmed_up_radius
from smx.science.methods.base import StepContext, StepOutput, add_noise, draw_noise
from smx.science.methods.params import SmoothAdvParams


def loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    context: StepContext[SmoothAdvParams],
) -> StepOutput:
    """Mean cross-entropy over the m noisy copies f(x_adv + n_j) of each image's adversary.

    The same m noise draws serve the attack and the loss. The attack radius warms up linearly over
    `warmup` epochs and the step size 2 * radius / T follows it.
    """
    params = context.params
    epsilon = warmed_up_radius(params.epsilon, params.warmup, context.epoch)
    noise = draw_noise(inputs, params.noise_samples, sigma)
    adversaries = smoothadv_pgd(model, inputs, targets, noise, epsilon, params.steps)
    noisy_targets = targets.repeat(params.noise_samples)
    logits = model(add_noise(adversaries, noise))
    return StepOutput(
        loss=F.cross_entropy(logits, noisy_targets),
        noisy_logits=logits,
        noisy_targets=noisy_targets,
        extras={"epsilon": epsilon},
    )
