"""PGD on the soft smoothed classifier, as SmoothAdv (Salman et al. 2019) and consistency regularization's SmoothAdv
combination (Jeong & Shin 2020) run it, SmoothMix's unrestricted ascent (Jeong et al. 2021, also behind the
mixing-ratio analysis), and the helpers they share. Both PGDs ascend

    mean_i -log(max(mean_j softmax(f(x'_i + n_j))_{y_i}, 1e-20))

with the noise draws n_j fixed for the whole attack, in eval mode with parameter gradients off, with the step size
2 * epsilon / T. They differ in the details of the reference code each follows (the SmoothAdv port and
smoothing-consistency's own attack), which these functions keep.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F

from smx.science.methods.base import MIN_PROBABILITY, add_noise

# Guard against division by a zero gradient norm.
NORM_EPSILON = 1e-8


@contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode with parameter gradients off, so an attack neither updates BatchNorm statistics nor spends
    work on parameter gradients; both are restored afterwards."""
    was_training = model.training
    requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in requires_grad:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)
        model.train(was_training)


def per_image_norm(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm of every image, shaped to broadcast against the batch."""
    return tensor.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.ndim - 1)))


def project_l2(points: torch.Tensor, centers: torch.Tensor, radius: float) -> torch.Tensor:
    """Each point moved onto the L2 ball of `radius` around its center when it lies outside."""
    return centers + (points - centers).renorm(p=2, dim=0, maxnorm=radius)


def warmed_up_radius(epsilon: float, warmup: int, epoch: int) -> float:
    """The attack radius of a 0-based epoch: it grows linearly over the first `warmup` epochs, then stays at epsilon."""
    return min(epsilon, (epoch + 1) * epsilon / warmup)


def smoothed_loss_gradient(
    model: torch.nn.Module,
    points: torch.Tensor,
    targets: torch.Tensor,
    noise: torch.Tensor,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Gradient with respect to `points` of the soft smoothed classifier's NLL -log(mean_j softmax(f(x + n_j))_y).

    `noise` (m, *points.shape) holds the draws n_j. The NLL is averaged over the images as in the SmoothAdv and
    consistency references, or summed as in SmoothMix's, where an image's gradient is its own whatever the chunk
    size. The callers normalise each image's gradient, so the reduction changes a step only through rounding and
    the 1e-8 guard of the norm; each caller keeps its reference's.
    """
    noise_samples, batch_size = noise.shape[0], points.shape[0]
    points = points.detach().requires_grad_(True)
    probabilities = F.softmax(model(add_noise(points, noise)), dim=1)
    mean_probabilities = probabilities.view(noise_samples, batch_size, -1).mean(dim=0)
    attack_loss = F.nll_loss(torch.log(mean_probabilities.clamp(min=MIN_PROBABILITY)), targets, reduction=reduction)
    (gradient,) = torch.autograd.grad(attack_loss, points)
    return gradient


def smoothadv_pgd(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    noise: torch.Tensor,
    epsilon: float,
    steps: int,
) -> torch.Tensor:
    """Salman et al.'s multi-noise PGD: from a zero perturbation, `steps` unit-direction steps of 2 * epsilon / steps,
    each followed by the clamp of the image to [0, 1] and then the projection onto the epsilon ball.

    `noise` (m, *inputs.shape) holds the fixed draws. Returns the adversarial images, detached; the model's mode
    and gradient flags are restored on return.
    """
    step_size = 2.0 * epsilon / steps
    perturbation = torch.zeros_like(inputs)
    # Gradients with respect to the input are needed even when the caller runs under torch.no_grad().
    with frozen_eval(model), torch.enable_grad():
        for _ in range(steps):
            gradient = smoothed_loss_gradient(model, inputs + perturbation, targets, noise)
            norms = per_image_norm(gradient)
            # A zero gradient has no direction; the reference steps along a standard normal draw instead (its
            # length is then cut by the projection). torch.where keeps the GPU from waiting on a test of `norms`.
            direction = torch.where(norms > 0, gradient / norms, torch.randn_like(gradient))
            perturbation = perturbation + step_size * direction
            # Reference order: into the pixel range first, then into the ball (the reverse of consistency_pgd).
            perturbation = (inputs + perturbation).clamp(0.0, 1.0) - inputs
            perturbation = perturbation.renorm(p=2, dim=0, maxnorm=epsilon)
    return (inputs + perturbation).detach()


def consistency_pgd(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    noise: torch.Tensor,
    epsilon: float,
    steps: int,
) -> torch.Tensor:
    """The consistency repository's own SmoothAdv PGD: from the clean input, `steps` steps of 2 * epsilon / steps
    along the gradient divided by its norm + 1e-8, each followed by the projection onto the epsilon ball and then
    the clamp to [0, 1].

    The reference runs the m noisy copies through the model one at a time; in eval mode one batched forward
    computes the same. Returns the adversarial images, detached; the model's mode and flags are restored.
    """
    step_size = 2.0 * epsilon / steps
    adversary = inputs.detach()
    with frozen_eval(model), torch.enable_grad():
        for _ in range(steps):
            gradient = smoothed_loss_gradient(model, adversary, targets, noise)
            adversary = adversary + step_size * gradient / (per_image_norm(gradient) + NORM_EPSILON)
            # Reference order: into the ball first, then into the pixel range (the reverse of smoothadv_pgd).
            adversary = project_l2(adversary, inputs, epsilon).clamp(0.0, 1.0)
    return adversary.detach()


def smoothed_adversary(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    step_size: float,
    mix_step: int = 0,
    max_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised gradient ascent on the soft smoothed classifier's loss -log(mean_j softmax(f(x + n_j))_y).

    `noise` (m, *inputs.shape) holds the fixed draws n_j; every step moves each image by exactly `step_size`
    in L2 before the optional projection onto the `max_norm` ball around `inputs` and the clamp to [0, 1].
    Returns (the iterate at step `mix_step`, the input itself if the search is shorter, and the final iterate);
    the model's mode and gradient flags are restored on return.
    """
    adversary = inputs.detach()
    kept = adversary
    # Gradients with respect to the input are needed even when the caller runs under torch.no_grad().
    with frozen_eval(model), torch.enable_grad():
        for step in range(steps):
            if step == mix_step:
                kept = adversary
            # Summed as in the reference: each image's gradient is its own, whatever the chunk size.
            gradient = smoothed_loss_gradient(model, adversary, targets, noise, reduction="sum")
            adversary = adversary + step_size * gradient / (per_image_norm(gradient) + NORM_EPSILON)
            if max_norm is not None:
                adversary = project_l2(adversary, inputs, max_norm)
            adversary = adversary.clamp(0.0, 1.0).detach()
    return kept, adversary
