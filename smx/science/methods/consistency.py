"""Consistency regularization (Jeong & Shin 2020), `train_consistency.py` + `consistency.py` of
jh-jeong/smoothing-consistency, optionally on top of its SmoothAdv PGD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smx.science.methods.attacks import consistency_pgd, warmed_up_radius
from smx.science.methods.base import MIN_PROBABILITY, StepContext, StepOutput, add_noise, draw_noise
from smx.science.methods.params import ConsistencyParams


def loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    context: StepContext[ConsistencyParams],
) -> StepOutput:
    """L = mean CE over the b*m noisy rows + mean_i [lbd * (1/m) sum_j KL(pbar_i || p_ij) + eta * H(pbar_i)],

    p_ij the softmax of copy j of image i and pbar_i their average, from one train-mode forward. pbar is not
    detached. With `adversarial`, the copies are built around the repo's PGD adversary, whose attack reuses the
    same noise draws; its radius warms up over `warmup` epochs.
    """
    params = context.params
    noise_samples, batch_size = params.noise_samples, inputs.shape[0]
    noise = draw_noise(inputs, noise_samples, sigma)
    if params.adversarial:
        epsilon = warmed_up_radius(params.epsilon, params.warmup, context.epoch)
        inputs = consistency_pgd(model, inputs, targets, noise, epsilon, params.steps)

    noisy_targets = targets.repeat(noise_samples)
    logits = model(add_noise(inputs, noise))
    cross_entropy = F.cross_entropy(logits, noisy_targets)
    log_probabilities = F.log_softmax(logits, dim=1).view(noise_samples, batch_size, -1)
    mean_probabilities = log_probabilities.exp().mean(dim=0)
    divergence = F.kl_div(log_probabilities, mean_probabilities.expand_as(log_probabilities), reduction="none")
    consistency = divergence.sum(dim=2).mean(dim=0)
    entropy = -(mean_probabilities * torch.log(mean_probabilities.clamp(min=MIN_PROBABILITY))).sum(dim=1)
    regulariser = (params.lbd * consistency + params.eta * entropy).mean()
    return StepOutput(
        loss=cross_entropy + regulariser,
        noisy_logits=logits,
        noisy_targets=noisy_targets,
        extras={
            "cross_entropy": cross_entropy.detach(),
            "consistency": consistency.mean().detach(),
            "entropy": entropy.mean().detach(),
        },
    )
