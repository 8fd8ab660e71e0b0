"""CERTIFY and PREDICT: soundness on a classifier whose smoothed version is known exactly, and
certify_dataset's agreement with per-image certify."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, binomtest, norm

from smx.science import smoothing
from smx.science.bounds import certified_radius, lower_confidence_bound
from smx.science.smoothing import ABSTAIN, Certificate, certify, certify_dataset, predict

SIGMA = 0.5
IMAGE_SHAPE = (1, 4, 4)


class LinearClassifier(torch.nn.Module):
    """f(x) = 1[w.x + b > 0] as two logits. Under N(0, sigma^2 I) noise the smoothed probability of class 1
    is Phi((w.x + b) / (sigma |w|)), and the distance from x to the decision boundary is |w.x + b| / |w|."""

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = bias

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        score = inputs.flatten(1) @ self.weight + self.bias
        return torch.stack((-score, score), dim=1)


class BrightnessClassifier(torch.nn.Module):
    """Class c for an image of constant brightness c / 10. With sigma = 1e-3 the noise moves the mean of 16
    pixels by about 2.5e-4, 200 standard deviations short of the class boundary, so every draw agrees."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        brightness = inputs.flatten(1).mean(dim=1, keepdim=True)
        return -(brightness * 10 - torch.arange(10)).abs()


class RowPatternClassifier(torch.nn.Module):
    """Ignores its input: row i of every forward pass gets classes[i % len(classes)]."""

    def __init__(self, classes: list[int], num_classes: int) -> None:
        super().__init__()
        self.classes = torch.tensor(classes)
        self.num_classes = num_classes

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(inputs.shape[0])
        return torch.nn.functional.one_hot(self.classes[rows % len(self.classes)], self.num_classes).float()


class RecordingModel(torch.nn.Module):
    """Wraps a model and records the shapes and modes of the forward passes it sees."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.pass_sizes: list[int] = []
        self.modes: set[tuple[bool, bool]] = set()  # (training, grad enabled)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.pass_sizes.append(inputs.shape[0])
        self.modes.add((self.training, torch.is_grad_enabled()))
        return self.inner(inputs)


def classifier_at_distance(distance: float) -> tuple[LinearClassifier, torch.Tensor]:
    """A linear classifier and an image it puts in class 1, `distance` from its decision boundary."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(math.prod(IMAGE_SHAPE), generator=generator)
    image = torch.rand(IMAGE_SHAPE, generator=generator)
    bias = distance * weight.norm().item() - (weight @ image.flatten()).item()
    return LinearClassifier(weight, bias), image


def certify_each(model, image, trials, n0, n, alpha, batch_size) -> list[tuple[int, float]]:
    """(prediction, radius) of `trials` independent runs of certify."""
    answers = []
    for seed in range(trials):
        torch.manual_seed(seed)
        prediction, radius, _, _ = certify(model, image, SIGMA, n0, n, alpha, batch_size, num_classes=2)
        answers.append((prediction, radius))
    return answers


def certify_copies(model, image, trials, n0, n, alpha, batch_size) -> list[tuple[int, float]]:
    """(prediction, radius) of certify_dataset on `trials` copies of the image."""
    torch.manual_seed(0)
    copies = image.expand(trials, *IMAGE_SHAPE)
    labels = torch.ones(trials, dtype=torch.int64)
    certificates = certify_dataset(model, copies, labels, range(trials), SIGMA, n0, n, alpha, batch_size, 2)
    return [(certificate.prediction, certificate.radius) for certificate in certificates]


def test_lower_confidence_bound_known_values():
    for trials, alpha in [(1, 0.5), (100, 0.05), (1000, 0.001)]:
        assert lower_confidence_bound(trials, trials, alpha) == pytest.approx(alpha ** (1 / trials), rel=1e-12)
        assert lower_confidence_bound(0, trials, alpha) == 0.0
    # The two-sided 95% Clopper-Pearson interval for 50 of 100 is (0.3983, 0.6017).
    assert lower_confidence_bound(50, 100, 0.025) == pytest.approx(0.3983, abs=1e-4)
    assert lower_confidence_bound(60, 100, 0.05) < lower_confidence_bound(61, 100, 0.05) < 0.61


def test_the_bound_and_the_radius_are_scipy_stats_beta_and_normal_quantiles_exactly():
    # smx computes them with scipy.special, which scipy.stats calls: not one bit may differ.
    rng = np.random.default_rng(0)
    for trials in (10, 1000, 100_000):
        for alpha in (0.001, 0.01, 0.05):
            for successes in (1, 2, trials // 2, trials - 1, trials, *rng.integers(1, trials, 200).tolist()):
                pa_lower = lower_confidence_bound(successes, trials, alpha)
                assert pa_lower == float(beta.ppf(alpha, successes, trials - successes + 1))
                assert certified_radius(pa_lower, SIGMA) == float(SIGMA * norm.ppf(pa_lower))


def test_certified_radius():
    assert certified_radius(0.5, SIGMA) == 0.0
    assert certified_radius(norm.cdf(1.0), SIGMA) == pytest.approx(SIGMA)
    # With n = 100,000 and alpha = 0.001 no radius exceeds about 3.8 sigma: the authors' MNIST logs top
    # out at 3.81 (sigma 1.0) and 1.91 (sigma 0.5).
    largest_pa_lower = lower_confidence_bound(100_000, 100_000, 0.001)
    assert round(certified_radius(largest_pa_lower, 1.0), 2) == 3.81
    assert round(certified_radius(largest_pa_lower, 0.5), 2) == 1.91


@pytest.mark.parametrize("run_trials", [certify_each, certify_copies], ids=["certify", "certify_dataset"])
@pytest.mark.parametrize("distance", [0.2, 0.4, 1.0])
def test_certificates_are_sound_and_tight_on_a_linear_classifier(run_trials, distance):
    trials, n0, n, alpha = 200, 100, 1000, 0.05
    model, image = classifier_at_distance(distance)
    answers = run_trials(model, image, trials, n0, n, alpha, batch_size=300)

    radii = np.array([radius for _, radius in answers])
    # Each certificate overstates the distance with probability at most alpha; a sound CERTIFY exceeds
    # this count with probability below 0.001.
    overstated = int(np.sum(radii > distance))
    assert overstated <= binom.ppf(0.999, trials, alpha)
    assert {prediction for prediction, _ in answers} <= {1, ABSTAIN}
    # The radius that the lower bound at the exact expected count would give; the sample mean of 200
    # radii has a standard deviation of about 0.002.
    expected_count = round(n * norm.cdf(distance / SIGMA))
    expected_radius = certified_radius(lower_confidence_bound(expected_count, n, alpha), SIGMA)
    assert radii.mean() == pytest.approx(expected_radius, abs=0.01)


def test_far_points_are_certified_and_boundary_points_abstain():
    n0, n, alpha = 100, 1000, 0.001
    far_model, far_image = classifier_at_distance(3 * SIGMA)
    boundary_model, boundary_image = classifier_at_distance(0.0)
    for seed in range(10):
        torch.manual_seed(seed)
        prediction, radius, pa_lower, count = certify(far_model, far_image, SIGMA, n0, n, alpha, 400, 2)
        assert prediction == 1 and radius > 2 * SIGMA and count >= 990 and pa_lower > 0.97
        assert certify(boundary_model, boundary_image, SIGMA, n0, n, alpha, 400, 2)[:2] == (ABSTAIN, 0.0)
        assert predict(far_model, far_image, SIGMA, n, alpha, 400, 2) == 1
        assert predict(boundary_model, boundary_image, SIGMA, n, alpha, 400, 2) == ABSTAIN


def test_predict_abstains_exactly_when_the_binomial_test_cannot_separate_the_top_two():
    image = torch.zeros(IMAGE_SHAPE)
    tied = RowPatternClassifier([3, 7], num_classes=10)
    assert predict(tied, image, SIGMA, 100, 0.5, 100, 10) == ABSTAIN
    # 60 draws of class 2 against 40 of class 5.
    sixty_forty = RowPatternClassifier([2] * 6 + [5] * 4, num_classes=10)
    p_value = binomtest(60, 100, p=0.5).pvalue
    assert 0.05 < p_value < 0.06
    assert predict(sixty_forty, image, SIGMA, 100, 0.05, 100, 10) == ABSTAIN
    assert predict(sixty_forty, image, SIGMA, 100, 0.06, 100, 10) == 2
    assert predict(RowPatternClassifier([4], 10), image, SIGMA, 100, 0.001, 100, 10) == 4
    # A one-class model has no runner-up: its class wins every draw, against none.
    assert predict(RowPatternClassifier([0], 1), image, SIGMA, 100, 0.001, 100, 1) == 0


@pytest.mark.parametrize(
    "n0, n, batch_size",
    [(7, 23, 10), (3, 9, 64), (100, 1000, 400), (1, 6, 1)],
    ids=["n-over-batch", "images-per-pass", "reference-sizes", "one-draw-passes-abstain"],
)
def test_certify_dataset_equals_certify_when_every_draw_agrees(n0, n, batch_size):
    sigma, alpha = 1e-3, 0.01
    dataset_images = torch.stack([torch.full(IMAGE_SHAPE, label / 10) for label in range(10)])
    dataset_labels = torch.tensor([0, 1, 2, 3, 4, 0, 6, 7, 8, 0])  # images 5 and 9 are mislabelled
    indices = [8, 5, 0, 9, 3, 1, 2]
    images, labels = dataset_images[indices], dataset_labels[indices]
    model = RecordingModel(BrightnessClassifier())

    certificates = certify_dataset(model, images, labels, indices, sigma, n0, n, alpha, batch_size, 10)

    assert max(model.pass_sizes) <= batch_size
    assert sum(model.pass_sizes) == len(indices) * (n0 + n)
    # n agreeing draws bound pA below by alpha ** (1 / n), which is under 1/2 for n = 6 and alpha = 0.01.
    pa_lower = alpha ** (1 / n)
    certified = pa_lower >= 0.5
    for image, label, index, certificate in zip(images, labels.tolist(), indices, certificates):
        prediction = index if certified else ABSTAIN
        assert (certificate.index, certificate.label, certificate.prediction) == (index, label, prediction)
        assert certificate.correct == int(prediction == label)
        assert certificate.count == n
        assert certificate.pa_lower == pytest.approx(pa_lower, rel=1e-9)
        assert certificate.radius == (pytest.approx(certified_radius(pa_lower, sigma), rel=1e-9) if certified else 0.0)
        one_image = certify(model, image, sigma, n0, n, alpha, batch_size, 10)
        assert one_image == (certificate.prediction, certificate.radius, certificate.pa_lower, certificate.count)


def test_certify_dataset_memory_is_bounded_by_the_batch_and_flat_in_n():
    model, image = classifier_at_distance(0.4)
    for n in (10, 1000, 20_000):
        recording = RecordingModel(model)
        certify_dataset(recording, image.expand(3, *IMAGE_SHAPE), [1, 1, 1], range(3), SIGMA, 100, n, 0.001, 256, 2)
        assert max(recording.pass_sizes) <= 256
        assert sum(recording.pass_sizes) == 3 * (100 + n)


def test_certify_dataset_reports_each_image_in_order_and_resumes_with_the_rest():
    model, image = classifier_at_distance(1.0)
    dataset_labels = [1, 0, 1, 1, 0, 1]
    reported: list[Certificate] = []

    def certify_part(indices: list[int]) -> list[Certificate]:
        images = image.expand(len(indices), *IMAGE_SHAPE)
        labels = [dataset_labels[index] for index in indices]
        return certify_dataset(model, images, labels, indices, SIGMA, 100, 500, 0.001, 256, 2, reported.append)

    torch.manual_seed(0)
    done = certify_part([4, 0, 2])
    resumed = certify_part([1, 3, 5])

    assert reported == done + resumed
    assert [certificate.index for certificate in reported] == [4, 0, 2, 1, 3, 5]
    assert [certificate.label for certificate in reported] == [0, 1, 1, 0, 1, 1]
    assert [certificate.prediction for certificate in reported] == [1] * 6
    assert [certificate.correct for certificate in reported] == [0, 1, 1, 0, 1, 1]
    assert all(certificate.seconds >= 0.0 for certificate in reported)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_a_seeded_certificate_depends_on_neither_the_rows_per_pass_nor_the_other_images(device, monkeypatch):
    # Rows of 9 values in chunks of 7 rows: torch's generators give other numbers when a tensor of these sizes is
    # drawn in other pieces, so the noise is the same only if each image's draws come in the same chunks.
    monkeypatch.setattr(smoothing, "NOISE_CHUNK_BYTES", 4 * 9 * 7)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(9, generator=generator)
    images = torch.rand(6, 1, 3, 3, generator=generator)
    # The boundary through the images' mean score: each image's counts vary from one noise draw to the next.
    model = LinearClassifier(weight, -(images.flatten(1) @ weight).mean().item()).to(device)
    labels = [0, 1, 1, 0, 1, 0]

    def certificates(indices: list[int], batch_size: int, seed: int = 3) -> dict[int, tuple[int, int, float]]:
        answers = certify_dataset(model, images[indices], [labels[index] for index in indices], indices, 1.0, 10,
                                  40, 0.001, batch_size, 2, device=device, seed=seed)
        return {answer.index: (answer.prediction, answer.count, answer.pa_lower) for answer in answers}

    every_image = certificates(list(range(6)), batch_size=64)
    assert len({count for _, count, _ in every_image.values()}) > 1
    for batch_size in (1, 5, 13, 50, 1000):
        assert certificates(list(range(6)), batch_size) == every_image
    assert certificates([5, 2], batch_size=7) == {index: every_image[index] for index in (5, 2)}
    assert certificates(list(range(6)), batch_size=64, seed=4) != every_image


def test_certify_dataset_needs_one_label_and_index_per_image():
    model, image = classifier_at_distance(1.0)
    with pytest.raises(ValueError, match="need one each"):
        certify_dataset(model, image.expand(3, *IMAGE_SHAPE), [1, 1, 1], [0, 1], SIGMA, 10, 100, 0.001, 64, 2)


def test_certification_runs_in_eval_mode_without_grad_and_restores_the_mode():
    model, image = classifier_at_distance(1.0)
    recording = RecordingModel(model)
    recording.train()
    certify(recording, image, SIGMA, 10, 100, 0.001, 64, 2)
    predict(recording, image, SIGMA, 100, 0.001, 64, 2)
    certify_dataset(recording, image.unsqueeze(0), [1], [0], SIGMA, 10, 100, 0.001, 64, 2)
    assert recording.modes == {(False, False)}
    assert recording.training and recording.inner.training


def test_a_model_with_the_wrong_number_of_logits_is_rejected():
    model, image = classifier_at_distance(1.0)
    with pytest.raises(ValueError, match="num_classes"):
        certify(model, image, SIGMA, 10, 100, 0.001, 64, num_classes=10)


class NoiseRecorder(torch.nn.Module):
    """Keeps every input it sees (the noise itself, for zero images and sigma 1) and always predicts class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.inputs.append(inputs.clone())
        return torch.nn.functional.one_hot(torch.zeros(len(inputs), dtype=torch.long), 10).float()


@pytest.mark.parametrize("seed", [0, 7])
def test_no_image_is_certified_with_the_noise_its_model_was_trained_on(seed):
    # Training draws from torch's generator seeded with the experiment's seed itself.
    torch.manual_seed(seed)
    training_noise = torch.randn(64, *IMAGE_SHAPE)
    recorder = NoiseRecorder()
    certify_dataset(recorder, torch.zeros(3, *IMAGE_SHAPE), [0, 0, 0], [0, 1, seed], 1.0, 4, 60, 0.001, 64, 10,
                    seed=seed)
    certification_noise = torch.cat(recorder.inputs)
    assert certification_noise.shape == (3 * 64, *IMAGE_SHAPE)
    assert not any(torch.equal(row, training_row) for row in certification_noise for training_row in training_noise)
