"""MACER (Zhai et al. 2020), as in the jh-jeong port `train_macer.py` + `third_party/macer.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smx.science.methods.base import StepContext, StepOutput, add_noise, draw_noise
from smx.science.methods.params import MacerParams

# Added to the smoothed probability before the log, as in the reference.
LOG_EPSILON = 1e-10


def loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    context: StepContext[MacerParams],
) -> StepOutput:
    """L = (1/b) [sum_i -log(mean_j softmax(z_ij)_{y_i} + 1e-10)
                  + lbd * sigma/2 * sum_{i in S} (gamma - (icdf(p1_i) - icdf(p2_i)))],

    z_ij the logits of k noisy copies of image i from one train-mode forward, p1 >= p2 the top two entries of
    mean_j softmax(beta * z_ij), S the images whose top class is right, whose icdf gap is finite and at most gamma.
    The hinge is the mask S, and both sums are divided by the whole chunk, as in the reference. lbd is 0 during
    the first `deferred_epochs` epochs.
    """
    params = context.params
    noise_samples, batch_size = params.noise_samples, inputs.shape[0]
    noisy_targets = targets.repeat(noise_samples)
    logits = model(add_noise(inputs, draw_noise(inputs, noise_samples, sigma)))
    grouped_logits = logits.view(noise_samples, batch_size, -1)

    smoothed_probabilities = F.softmax(grouped_logits, dim=2).mean(dim=0)
    true_probabilities = smoothed_probabilities.gather(1, targets[:, None]).squeeze(1)
    classification_loss = -torch.log(true_probabilities + LOG_EPSILON).sum() / batch_size
    extras: dict[str, torch.Tensor | float] = {"classification_loss": classification_loss.detach()}

    lbd = 0.0 if context.epoch < params.deferred_epochs else params.lbd
    if lbd == 0.0:
        return StepOutput(loss=classification_loss, noisy_logits=logits, noisy_targets=noisy_targets, extras=extras)

    sharpened = F.softmax(params.beta * grouped_logits, dim=2).mean(dim=0)
    top_probabilities, top_classes = sharpened.topk(2, dim=1)
    with torch.no_grad():
        gap = torch.special.ndtri(top_probabilities[:, 0]) - torch.special.ndtri(top_probabilities[:, 1])
        inside = (top_classes[:, 0] == targets) & torch.isfinite(gap) & (gap.abs() <= params.gamma)
    # Images outside S enter at p = 1/2, where icdf is finite, and their terms are multiplied by zero: multiplying
    # icdf(0) = -inf by zero would turn the masked gradients into NaN. No boolean indexing, whose data-dependent
    # shape would make every step wait for the GPU and keep it out of a CUDA graph.
    kept = torch.where(inside[:, None], top_probabilities, 0.5)
    kept_gap = torch.special.ndtri(kept[:, 0]) - torch.special.ndtri(kept[:, 1])
    robustness_loss = sigma / 2 * ((params.gamma - kept_gap) * inside).sum() / batch_size
    extras.update(robustness_loss=robustness_loss.detach(), margin_rate=inside.float().mean())
    return StepOutput(
        loss=classification_loss + lbd * robustness_loss,
        noisy_logits=logits,
        noisy_targets=noisy_targets,
        extras=extras,
    )
