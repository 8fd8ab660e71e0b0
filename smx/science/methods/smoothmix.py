"""SmoothMix (Jeong et al. 2021): Gaussian training plus a mixup towards the uniform distribution along an
unrestricted adversarial direction of the smoothed classifier. Follows the reference implementation,
jh-jeong/smoothmix `train_smoothmix.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smx.science.methods.attacks import project_l2, smoothed_adversary
from smx.science.methods.base import StepContext, StepOutput, add_noise, draw_noise
from smx.science.methods.params import SmoothMixParams


def loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    context: StepContext[SmoothMixParams],
) -> StepOutput:
    """L = mean CE on noisy copies of the mix start + eta * w_e * mean(mask * KL(y_mix || f(x_mix + n))).

    The same m noise draws serve the attack, the clean branch and the mix branch. The soft target y_mix keeps
    its gradient, as in the reference, so the mix term also trains the clean branch.
    """
    params = context.params
    warmup_weight = min(1.0, (context.epoch + 1) / params.warmup)
    noise = draw_noise(inputs, params.noise_samples, sigma)
    start, adversary = smoothed_adversary(
        model, inputs, targets, noise, params.steps, params.alpha, params.mix_step, params.max_norm
    )
    # With mix_step = 1 the one-step adversary replaces the clean input; its allowed radius grows with warm-up.
    start = project_l2(start, inputs, params.alpha * params.mix_step * warmup_weight).clamp(0.0, 1.0)

    noise_samples, batch_size = params.noise_samples, inputs.shape[0]
    noisy_targets = targets.repeat(noise_samples)
    clean_logits = model(add_noise(start, noise))
    clean_loss = F.cross_entropy(clean_logits, noisy_targets)
    num_classes = clean_logits.shape[1]
    smoothed_probabilities = F.softmax(clean_logits, dim=1).view(noise_samples, batch_size, num_classes).mean(dim=0)

    mix_ratio = torch.rand(batch_size, device=inputs.device, dtype=inputs.dtype) * 0.5
    image_ratio = mix_ratio.view(-1, *([1] * (inputs.ndim - 1)))
    mixed_inputs = (1.0 - image_ratio) * start + image_ratio * adversary
    mixed_targets = (1.0 - mix_ratio[:, None]) * smoothed_probabilities + mix_ratio[:, None] / num_classes
    mixed_log_probabilities = F.log_softmax(model(add_noise(mixed_inputs, noise)), dim=1)
    mix_divergence = F.kl_div(
        mixed_log_probabilities, mixed_targets.repeat(noise_samples, 1), reduction="none"
    ).sum(dim=1)

    # Only images the smoothed classifier already gets right are calibrated; the others still count in the mean.
    correct = (smoothed_probabilities.argmax(dim=1) == targets).to(mix_divergence.dtype)
    mix_loss = (correct.repeat(noise_samples) * mix_divergence).mean()
    total_loss = clean_loss + params.eta * warmup_weight * mix_loss
    return StepOutput(
        loss=total_loss,
        noisy_logits=clean_logits,
        noisy_targets=noisy_targets,
        extras={
            "clean_loss": clean_loss.detach(),
            "mix_loss": mix_loss.detach(),
            "mask_rate": correct.mean(),
        },
    )
