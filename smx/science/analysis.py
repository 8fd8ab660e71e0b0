"""The analyses of section 3.1 of Jeong et al. 2021 (SmoothMix), run on a trained base classifier f.

Both read the smoothed classifier through P(f(x + delta) = c), delta ~ N(0, sigma^2 I): the paper's definition,
with f the hard (argmax) base classifier, estimated as the share of `mc_samples` noisy copies of x on which f
predicts c. The smoothed prediction is the most frequent class, without CERTIFY's abstention: these are
descriptive statistics, not certificates.

- Table 1, `confidence_under_attack`: P(f(x' + delta) = y) and max_{c != y} P(f(x' + delta) = c) at the point x'
  that SmoothAdv's PGD (attacks.smoothadv_pgd) finds within the L2 ball of radius epsilon around each test
  image x; the paper averages both over the test set.
- Figure 3, `equal_confidence_mixing_ratios`: for each x the smoothed classifier gets right, its adversary x~
  from SmoothMix's normalised-gradient ascent (attacks.smoothed_adversary), then the smallest lambda among
  1/grid, 2/grid, ..., 1 at which the smoothed prediction at x + lambda (x~ - x) is no longer y.

Each attack draws its own m noise samples and keeps them for all its steps, as in training; every estimate of
P(f(x + delta) = c) uses fresh draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from smx.science.methods.attacks import per_image_norm, smoothadv_pgd, smoothed_adversary
from smx.science.methods.base import draw_noise
# CERTIFY's own counting (batched draws, counted on the device), so the estimates here are made the same way.
from smx.science.smoothing import count_predictions, evaluating, model_device

ProgressCallback = Callable[[float], None]  # receives the fraction of the images done


@dataclass
class ConfidenceResult:
    """One test image after the PGD attack of one radius (epsilon 0.0: the clean image)."""

    index: int  # position in the dataset
    label: int
    epsilon: float
    distance: float  # L2 distance of the attacked image from the clean one, at most epsilon up to fp32 rounding
    prediction: int  # the smoothed prediction at the attacked image
    true_confidence: float  # estimated P(f(x' + delta) = y)
    off_class_confidence: float  # estimated max over c != y of P(f(x' + delta) = c)


@dataclass
class MixingRatio:
    """One correctly classified test image and the line to its adversary."""

    index: int
    label: int
    distance: float  # L2 distance of the adversary from the image
    ratio: float | None  # smallest grid lambda at which the smoothed prediction changes; None: it never does
    prediction: int | None  # the class predicted there; None when the prediction never changes


def class_probabilities(
    model: torch.nn.Module, images: torch.Tensor, sigma: float, mc_samples: int, batch_size: int, num_classes: int
) -> torch.Tensor:
    """Estimated P(f(x + delta) = c) for each image and class, shape (images, classes): the share of mc_samples
    noisy copies of the image on which the base classifier predicts c. Forward passes have at most batch_size rows."""
    with evaluating(model):
        counts = count_predictions(model, images, (mc_samples,), sigma, batch_size, num_classes)
    return counts[:, 0].to(torch.float64) / mc_samples


def confidence_under_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: Sequence[int],
    *,
    sigma: float,
    epsilons: Sequence[float],
    attack_steps: int,
    attack_noise_samples: int,
    mc_samples: int,
    batch_size: int,
    num_classes: int,
    on_progress: ProgressCallback | None = None,
) -> list[ConfidenceResult]:
    """Table 1's confidences of images (N, C, H, W) with labels (N,) at each radius in epsilons (0.0: no attack).

    images[k] is image indices[k] of its dataset. The attack is smoothadv_pgd with attack_steps steps and
    attack_noise_samples noise draws, on chunks of batch_size // attack_noise_samples images.
    """
    device = model_device(model)
    images_per_chunk = max(1, batch_size // attack_noise_samples)
    results = []
    for start in range(0, len(indices), images_per_chunk):
        stop = min(start + images_per_chunk, len(indices))
        clean = images[start:stop].to(device, torch.float32)
        targets = labels[start:stop].to(device)
        for position, epsilon in enumerate(epsilons):
            if epsilon == 0.0:
                attacked = clean
            else:
                noise = draw_noise(clean, attack_noise_samples, sigma)
                attacked = smoothadv_pgd(model, clean, targets, noise, epsilon, attack_steps)
            probabilities = class_probabilities(model, attacked, sigma, mc_samples, batch_size, num_classes)
            true_confidence = probabilities.gather(1, targets.unsqueeze(1)).squeeze(1)
            # Probabilities are >= 0, so -1 at the true class leaves the largest off-class probability as the max.
            off_class_confidence = probabilities.scatter(1, targets.unsqueeze(1), -1.0).max(dim=1).values
            distances = per_image_norm(attacked - clean).flatten()
            rows = zip(indices[start:stop], targets.tolist(), distances.tolist(), probabilities.argmax(dim=1).tolist(),
                       true_confidence.tolist(), off_class_confidence.tolist())
            results.extend(
                ConfidenceResult(int(index), label, float(epsilon), distance, prediction, true, off_class)
                for index, label, distance, prediction, true, off_class in rows
            )
            if on_progress is not None:
                on_progress((start + (position + 1) / len(epsilons) * (stop - start)) / len(indices))
    return results


def equal_confidence_mixing_ratios(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: Sequence[int],
    *,
    sigma: float,
    alpha: float,
    steps: int,
    max_norm: float,
    noise_samples: int,
    mc_samples: int,
    grid: int,
    batch_size: int,
    num_classes: int,
    on_progress: ProgressCallback | None = None,
) -> list[MixingRatio]:
    """Figure 3's equal-confidence mixing ratios of the images (N, C, H, W) that the smoothed classifier gets right.

    The adversary is smoothed_adversary with `steps` steps of L2 length `alpha` within the `max_norm` ball, using
    noise_samples noise draws. The grid is scanned upwards and an image leaves the scan at its first change, so
    an image whose prediction flips early costs few estimates. Points on the line need no clamp: both ends lie
    in [0, 1].
    """
    device = model_device(model)
    images_per_chunk = max(1, batch_size // noise_samples)
    results = []
    for start in range(0, len(indices), images_per_chunk):
        stop = min(start + images_per_chunk, len(indices))

        def on_step(fraction: float, start: int = start, stop: int = stop) -> None:
            if on_progress is not None:
                on_progress((start + fraction * (stop - start)) / len(indices))

        clean = images[start:stop].to(device, torch.float32)
        targets = labels[start:stop].to(device)
        clean_predictions = class_probabilities(model, clean, sigma, mc_samples, batch_size, num_classes).argmax(dim=1)
        correct = clean_predictions == targets
        chunk_indices = [index for index, right in zip(indices[start:stop], correct.tolist()) if right]
        if chunk_indices:
            clean, targets = clean[correct], targets[correct]
            noise = draw_noise(clean, noise_samples, sigma)
            _, adversary = smoothed_adversary(model, clean, targets, noise, steps, alpha, max_norm=max_norm)
            direction = adversary - clean
            ratios, changed_to = _first_changes(model, clean, direction, targets, sigma, mc_samples, grid,
                                                batch_size, num_classes, on_step)
            distances = per_image_norm(direction).flatten()
            rows = zip(chunk_indices, targets.tolist(), distances.tolist(), ratios, changed_to)
            results.extend(
                MixingRatio(int(index), label, distance, ratio, prediction)
                for index, label, distance, ratio, prediction in rows
            )
        on_step(1.0)
    return results


def _first_changes(
    model: torch.nn.Module,
    clean: torch.Tensor,
    direction: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    mc_samples: int,
    grid: int,
    batch_size: int,
    num_classes: int,
    on_step: ProgressCallback,
) -> tuple[list[float | None], list[int | None]]:
    """For each image, the first lambda = k / grid at which the smoothed prediction at clean + lambda * direction
    differs from its target, and the class predicted there (None, None where none does). on_step receives the
    share of the grid scanned."""
    ratios: list[float | None] = [None] * len(targets)
    changed_to: list[int | None] = [None] * len(targets)
    unchanged = torch.arange(len(targets), device=targets.device)
    for step in range(1, grid + 1):
        ratio = step / grid
        points = clean[unchanged] + ratio * direction[unchanged]
        predictions = class_probabilities(model, points, sigma, mc_samples, batch_size, num_classes).argmax(dim=1)
        changed = predictions != targets[unchanged]
        for position, prediction in zip(unchanged[changed].tolist(), predictions[changed].tolist()):
            ratios[position], changed_to[position] = ratio, prediction
        unchanged = unchanged[~changed]
        on_step(ratio)
        if len(unchanged) == 0:
            break
    return ratios, changed_to
