"""The baselines: stability training, SmoothAdv, MACER and consistency regularization.

Each loss is pinned on a tiny fixed problem (a 4-pixel, 3-class tanh network in float64, four images, seeded noise)
against a value the test computes on its own: numpy, one image and one noise draw at a time, with attack
gradients taken by central finite differences instead of autograd.
"""

from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smx.science.data import load_dataset
from smx.science.methods import attacks, consistency, macer, smoothadv, stability
from smx.science.methods.base import StepContext, add_noise, draw_noise
from smx.science.methods.params import ConsistencyParams, MacerParams, SmoothAdvParams, StabilityParams
from smx.science.models import build_model
from smx.science.training import TrainSettings, train

SIGMA = 0.5
NOISE_SEED = 11
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, NUM_CLASSES)
    ).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(2.0 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return model


@pytest.fixture
def tiny_batch():
    # Four 1x2x2 images; a few pixels sit near 0 and 1 so that the attacks' clamps come into play.
    inputs = torch.tensor(
        [[0.5, 0.2, 0.8, 0.4], [0.95, 0.1, 0.6, 0.3], [0.3, 0.7, 0.02, 0.5], [0.6, 0.5, 0.4, 0.98]],
        dtype=torch.float64,
    ).view(4, 1, 2, 2)
    # The tiny network predicts class 2 everywhere, so the last image is misclassified.
    targets = torch.tensor([2, 2, 2, 1])
    return inputs, targets


def context(params, epoch=0, epochs=10):
    return StepContext(params=params, epoch=epoch, epochs=epochs, num_classes=NUM_CLASSES)


def seeded_noise(inputs, noise_samples):
    """The draws a method makes first after torch.manual_seed(NOISE_SEED), as numpy (m, b, 4)."""
    torch.manual_seed(NOISE_SEED)
    noise = torch.randn((noise_samples, *inputs.shape), dtype=inputs.dtype) * SIGMA
    return noise.flatten(2).numpy()


# ---- an independent numpy model of the tiny network ----


def numpy_weights(model):
    return [parameter.detach().numpy().copy() for parameter in model.parameters()]


def numpy_logits(weights, image):
    first, first_bias, second, second_bias = weights
    return second @ np.tanh(first @ image + first_bias) + second_bias


def numpy_softmax(logits):
    exponentials = np.exp(logits - logits.max())
    return exponentials / exponentials.sum()


def smoothed_nll(weights, point, label, noises):
    """-log of the noise-averaged softmax of the true class, floored at 1e-20, for one image."""
    average = np.mean([numpy_softmax(numpy_logits(weights, point + noise)) for noise in noises], axis=0)
    return -np.log(max(average[label], 1e-20))


def numeric_gradient(function, point, step=1e-6):
    gradient = np.zeros_like(point)
    for pixel in range(point.size):
        offset = np.zeros_like(point)
        offset[pixel] = step
        gradient[pixel] = (function(point + offset) - function(point - offset)) / (2 * step)
    return gradient


def shrink_into_ball(offset, radius):
    length = np.linalg.norm(offset)
    return offset * radius / length if length > radius else offset


def numpy_pgd(weights, images, labels, noise, epsilon, steps, clamp_first):
    """PGD image by image: step 2*epsilon/steps along the unit gradient, then clamp and shrink in either order."""
    adversaries = images.copy()
    for i, image in enumerate(images):
        point = image.copy()
        for _ in range(steps):
            gradient = numeric_gradient(lambda p: smoothed_nll(weights, p, labels[i], noise[:, i]), point)
            point = point + 2 * epsilon / steps * gradient / np.linalg.norm(gradient)
            if clamp_first:
                point = image + shrink_into_ball(np.clip(point, 0, 1) - image, epsilon)
            else:
                point = np.clip(image + shrink_into_ball(point - image, epsilon), 0, 1)
        adversaries[i] = point
    return adversaries


def numpy_cross_entropy(weights, image, label):
    return -np.log(numpy_softmax(numpy_logits(weights, image))[label])


# ---- stability training ----


def test_stability_loss_matches_an_independent_computation(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    torch.manual_seed(NOISE_SEED)
    output = stability.loss(tiny_model, inputs, targets, SIGMA, context(StabilityParams(lbd=2.0)))

    weights, images, labels = numpy_weights(tiny_model), inputs.flatten(1).numpy(), targets.numpy()
    noise = seeded_noise(inputs, 1)[0]
    clean_total = soft_total = 0.0
    for i in range(4):
        clean = numpy_softmax(numpy_logits(weights, images[i]))
        noisy = numpy_softmax(numpy_logits(weights, images[i] + noise[i]))
        clean_total += -np.log(clean[labels[i]])
        soft_total += -sum(clean[c] * np.log(noisy[c]) for c in range(NUM_CLASSES))
    assert output.loss.item() == pytest.approx(clean_total / 4 + 2.0 * soft_total / 4, rel=1e-10)
    assert output.noisy_logits.shape == (4, NUM_CLASSES)
    assert torch.equal(output.noisy_targets, targets)


def test_stability_target_is_not_detached(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    params = list(tiny_model.parameters())
    torch.manual_seed(NOISE_SEED)
    output = stability.loss(tiny_model, inputs, targets, SIGMA, context(StabilityParams(lbd=2.0)))
    gradients = torch.autograd.grad(output.loss, params)

    torch.manual_seed(NOISE_SEED)
    noisy_inputs = inputs + torch.randn(inputs.shape, dtype=inputs.dtype) * SIGMA
    clean_logits = tiny_model(inputs)
    log_noisy = F.log_softmax(tiny_model(noisy_inputs), dim=1)

    def with_target(target):
        return F.cross_entropy(clean_logits, targets) - 2.0 * (target * log_noisy).sum(dim=1).mean()

    attached = torch.autograd.grad(with_target(F.softmax(clean_logits, dim=1)), params, retain_graph=True)
    detached = torch.autograd.grad(with_target(F.softmax(clean_logits, dim=1).detach()), params)
    assert all(torch.allclose(a, b) for a, b in zip(gradients, attached))
    assert not all(torch.allclose(a, b) for a, b in zip(gradients, detached))


# ---- SmoothAdv ----


def test_smoothadv_loss_matches_an_independent_computation(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    # Epoch 1 of a 3-epoch warm-up: the radius is 2/3 of 0.6.
    params = SmoothAdvParams(epsilon=0.6, steps=3, noise_samples=2, warmup=3)
    torch.manual_seed(NOISE_SEED)
    output = smoothadv.loss(tiny_model, inputs, targets, SIGMA, context(params, epoch=1))

    weights, images, labels = numpy_weights(tiny_model), inputs.flatten(1).numpy(), targets.numpy()
    noise = seeded_noise(inputs, 2)
    adversaries = numpy_pgd(weights, images, labels, noise, epsilon=0.4, steps=3, clamp_first=True)
    expected = np.mean(
        [numpy_cross_entropy(weights, adversaries[i] + noise[j, i], labels[i]) for j in range(2) for i in range(4)]
    )
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)
    assert output.extras["epsilon"] == pytest.approx(0.4)
    assert torch.equal(output.noisy_targets, targets.repeat(2))


def test_smoothadv_adversary_stays_within_the_warmed_up_radius(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    assert [attacks.warmed_up_radius(1.0, 4, epoch) for epoch in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    params = SmoothAdvParams(epsilon=0.4, steps=5, noise_samples=2, warmup=4)
    for epoch, radius in [(0, 0.1), (2, 0.3), (7, 0.4)]:
        torch.manual_seed(NOISE_SEED)
        output = smoothadv.loss(tiny_model, inputs, targets, SIGMA, context(params, epoch=epoch))
        torch.manual_seed(NOISE_SEED)
        noise = draw_noise(inputs, 2, SIGMA)
        adversaries = attacks.smoothadv_pgd(tiny_model, inputs, targets, noise, radius, steps=5)
        # The loss trained on exactly these adversaries, with the attack's own noise.
        assert torch.allclose(output.noisy_logits, tiny_model(add_noise(adversaries, noise)))
        lengths = (adversaries - inputs).flatten(1).norm(dim=1)
        assert (lengths <= radius + 1e-6).all() and lengths.max() > 0.9 * radius
        assert adversaries.min() >= 0.0 and adversaries.max() <= 1.0


def test_smoothadv_steps_randomly_where_the_gradient_vanishes(tiny_batch):
    inputs, targets = tiny_batch
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, NUM_CLASSES)).double()
    torch.nn.init.zeros_(constant[1].weight)
    torch.manual_seed(0)
    adversaries = attacks.smoothadv_pgd(constant, inputs, targets, draw_noise(inputs, 2, SIGMA), 0.3, steps=2)
    lengths = (adversaries - inputs).flatten(1).norm(dim=1)
    assert (lengths > 0).all() and (lengths <= 0.3 + 1e-6).all()


def test_smoothadv_clamps_then_projects(tiny_model, tiny_batch):
    """One step of length 2*epsilon: into [0, 1] first, then back onto the epsilon ball (Salman's order)."""
    inputs, targets = tiny_batch
    noise = draw_noise(inputs, 2, SIGMA)
    gradient = attacks.smoothed_loss_gradient(tiny_model, inputs, targets, noise)
    direction = gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    clamped = (inputs + 2 * 0.3 * direction).clamp(0, 1) - inputs
    expected = inputs + clamped * (0.3 / clamped.flatten(1).norm(dim=1)).clamp(max=1.0).view(-1, 1, 1, 1)
    adversaries = attacks.smoothadv_pgd(tiny_model, inputs, targets, noise, 0.3, steps=1)
    assert torch.allclose(adversaries, expected, atol=1e-6)


# ---- MACER ----


def numpy_macer(weights, images, labels, noise, lbd, beta, gamma):
    """(loss, the hinge term gamma - gap of each image, 0 outside S) of one chunk, by MACER's formula as the
    reference port computes it."""
    normal = NormalDist()
    classification = 0.0
    hinges = []
    for i in range(len(images)):
        logits = [numpy_logits(weights, images[i] + draw) for draw in noise[:, i]]
        smoothed = np.mean([numpy_softmax(z) for z in logits], axis=0)
        classification += -np.log(smoothed[labels[i]] + 1e-10)
        sharpened = np.mean([numpy_softmax(beta * z) for z in logits], axis=0)
        first, second = sorted(sharpened, reverse=True)[:2]
        gap = normal.inv_cdf(first) - normal.inv_cdf(second)
        inside = int(np.argmax(sharpened)) == labels[i] and abs(gap) <= gamma
        hinges.append(gamma - gap if inside else 0.0)
    return (classification + lbd * SIGMA / 2 * sum(hinges)) / len(images), hinges


def test_macer_loss_matches_an_independent_computation(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    params = MacerParams(noise_samples=5, beta=2.0, lbd=3.0, gamma=3.0)
    torch.manual_seed(NOISE_SEED)
    output = macer.loss(tiny_model, inputs, targets, SIGMA, context(params))

    weights, images, labels = numpy_weights(tiny_model), inputs.flatten(1).numpy(), targets.numpy()
    expected, hinges = numpy_macer(weights, images, labels, seeded_noise(inputs, 5), lbd=3.0, beta=2.0, gamma=3.0)
    # Two images inside the margin, one outside it and one misclassified: both sides of the mask are exercised.
    assert [hinge > 0 for hinge in hinges] == [True, True, False, False]
    assert output.loss.item() == pytest.approx(expected, rel=1e-8)
    assert output.extras["margin_rate"].item() == 0.5
    assert output.noisy_logits.shape == (20, NUM_CLASSES)


def test_macer_mask_drops_images_outside_the_margin(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    torch.manual_seed(NOISE_SEED)
    tight = macer.loss(tiny_model, inputs, targets, SIGMA, context(MacerParams(noise_samples=5, beta=2.0, gamma=1e-6)))
    assert tight.extras["margin_rate"] == 0.0
    assert tight.loss.item() == pytest.approx(tight.extras["classification_loss"].item())

    # With a wide margin every correctly classified image is inside; the sum is divided by b = 4, not by |S| = 3.
    weights, images, labels = numpy_weights(tiny_model), inputs.flatten(1).numpy(), targets.numpy()
    _, hinges = numpy_macer(weights, images, labels, seeded_noise(inputs, 5), lbd=1.0, beta=2.0, gamma=50.0)
    torch.manual_seed(NOISE_SEED)
    wide = macer.loss(tiny_model, inputs, targets, SIGMA, context(MacerParams(noise_samples=5, beta=2.0, gamma=50.0)))
    assert wide.extras["margin_rate"] == 0.75
    assert wide.extras["robustness_loss"].item() == pytest.approx(SIGMA / 2 * sum(hinges) / 4, rel=1e-8)


def test_macer_drops_saturated_images_without_nan_gradients(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    torch.manual_seed(NOISE_SEED)
    output = macer.loss(tiny_model, inputs, targets, SIGMA, context(MacerParams(noise_samples=3, beta=1e4)))
    gradients = torch.autograd.grad(output.loss, list(tiny_model.parameters()))
    assert all(torch.isfinite(gradient).all() for gradient in gradients)


def test_macer_defers_the_robustness_term(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    params = MacerParams(noise_samples=4, beta=2.0, gamma=50.0, deferred_epochs=3)
    torch.manual_seed(NOISE_SEED)
    deferred = macer.loss(tiny_model, inputs, targets, SIGMA, context(params, epoch=2))
    torch.manual_seed(NOISE_SEED)
    active = macer.loss(tiny_model, inputs, targets, SIGMA, context(params, epoch=3))
    assert "robustness_loss" not in deferred.extras
    assert deferred.loss.item() == pytest.approx(deferred.extras["classification_loss"].item())
    assert active.loss.item() > deferred.loss.item()


# ---- consistency regularization ----


def numpy_consistency(weights, images, labels, noise, lbd, eta):
    noise_samples = noise.shape[0]
    cross_entropy = regulariser = 0.0
    for i in range(len(images)):
        copies = [numpy_softmax(numpy_logits(weights, images[i] + draw)) for draw in noise[:, i]]
        average = sum(copies) / noise_samples
        divergence = sum(sum(average[c] * np.log(average[c] / p[c]) for c in range(NUM_CLASSES)) for p in copies)
        entropy = -sum(average[c] * np.log(average[c]) for c in range(NUM_CLASSES))
        cross_entropy += sum(-np.log(p[labels[i]]) for p in copies)
        regulariser += lbd * divergence / noise_samples + eta * entropy
    return cross_entropy / (len(images) * noise_samples) + regulariser / len(images)


def test_consistency_loss_matches_an_independent_computation(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    torch.manual_seed(NOISE_SEED)
    params = ConsistencyParams(lbd=3.0, eta=0.7, noise_samples=3)
    output = consistency.loss(tiny_model, inputs, targets, SIGMA, context(params))
    weights, images, labels = numpy_weights(tiny_model), inputs.flatten(1).numpy(), targets.numpy()
    expected = numpy_consistency(weights, images, labels, seeded_noise(inputs, 3), lbd=3.0, eta=0.7)
    assert output.loss.item() == pytest.approx(expected, rel=1e-10)
    assert torch.equal(output.noisy_targets, targets.repeat(3))


def test_adversarial_consistency_loss_matches_an_independent_computation(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    params = ConsistencyParams(lbd=1.0, eta=0.5, noise_samples=2, adversarial=True, epsilon=0.9, steps=3, warmup=3)
    torch.manual_seed(NOISE_SEED)
    output = consistency.loss(tiny_model, inputs, targets, SIGMA, context(params, epoch=1))

    weights, images, labels = numpy_weights(tiny_model), inputs.flatten(1).numpy(), targets.numpy()
    noise = seeded_noise(inputs, 2)
    adversaries = numpy_pgd(weights, images, labels, noise, epsilon=0.6, steps=3, clamp_first=False)
    expected = numpy_consistency(weights, adversaries, labels, noise, lbd=1.0, eta=0.5)
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)


def test_consistency_average_is_not_detached(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    torch.manual_seed(NOISE_SEED)
    params = ConsistencyParams(lbd=3.0, eta=0.7, noise_samples=3)
    output = consistency.loss(tiny_model, inputs, targets, SIGMA, context(params))
    (gradient,) = torch.autograd.grad(output.loss, output.noisy_logits)

    def regularised(logits, detach):
        probabilities = F.softmax(logits, dim=1).view(3, 4, NUM_CLASSES)
        average = probabilities.mean(dim=0)
        target = average.detach() if detach else average
        divergence = (target * (target.log() - probabilities.log())).sum(dim=2).mean(dim=0)
        entropy = -(target * target.log()).sum(dim=1)
        return F.cross_entropy(logits, targets.repeat(3)) + (3.0 * divergence + 0.7 * entropy).mean()

    logits = output.noisy_logits.detach().requires_grad_(True)
    (attached,) = torch.autograd.grad(regularised(logits, detach=False), logits)
    (detached,) = torch.autograd.grad(regularised(logits, detach=True), logits)
    assert torch.allclose(gradient, attached) and not torch.allclose(gradient, detached)


def test_consistency_with_one_noise_sample_has_no_kl_term(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    torch.manual_seed(NOISE_SEED)
    output = consistency.loss(tiny_model, inputs, targets, SIGMA, context(ConsistencyParams(noise_samples=1)))
    assert output.extras["consistency"].item() == pytest.approx(0.0, abs=1e-12)
    expected = output.extras["cross_entropy"] + 0.5 * output.extras["entropy"]
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_consistency_attack_projects_then_clamps(tiny_model, tiny_batch):
    """One step of length 2*epsilon: back onto the epsilon ball first, then into [0, 1] (the reverse of Salman's)."""
    inputs, targets = tiny_batch
    noise = draw_noise(inputs, 2, SIGMA)
    gradient = attacks.smoothed_loss_gradient(tiny_model, inputs, targets, noise)
    direction = gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = (inputs + 0.3 * direction).clamp(0, 1)
    adversaries = attacks.consistency_pgd(tiny_model, inputs, targets, noise, 0.3, steps=1)
    salman = attacks.smoothadv_pgd(tiny_model, inputs, targets, noise, 0.3, steps=1)
    assert torch.allclose(adversaries, expected, atol=1e-6)
    assert not torch.allclose(adversaries, salman, atol=1e-3)  # the clamps of this batch make the order matter


def test_attacks_leave_the_model_as_they_found_it(tiny_model, tiny_batch):
    inputs, targets = tiny_batch
    tiny_model.train()
    noise = draw_noise(inputs, 2, SIGMA)
    for attack in (attacks.smoothadv_pgd, attacks.consistency_pgd):
        attack(tiny_model, inputs, targets, noise, 0.5, steps=2)
        assert tiny_model.training
        assert all(parameter.requires_grad and parameter.grad is None for parameter in tiny_model.parameters())


# ---- every method trains through the shared loop ----


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("stability", StabilityParams()),
        ("smoothadv", SmoothAdvParams(epsilon=0.5, steps=2, noise_samples=2, warmup=2)),
        ("macer", MacerParams(noise_samples=2)),
        ("consistency", ConsistencyParams(noise_samples=2)),
        ("consistency", ConsistencyParams(noise_samples=2, adversarial=True, steps=2)),
    ],
)
def test_each_method_trains_through_the_loop(method, params, tmp_path):
    data = load_dataset("mnist-mini", "train").subset(range(16))
    settings = TrainSettings(
        method=method, params=params, sigma=SIGMA, epochs=1, batch_size=16, lr=0.01, lr_step=1, lr_gamma=0.1,
        momentum=0.9, weight_decay=1e-4, seed=0, dataset="mnist-mini",
    )
    torch.manual_seed(0)
    model = build_model("lenet", "mnist-mini")
    before = [parameter.detach().clone() for parameter in model.parameters()]
    epochs = []
    final = train(model, data, settings, tmp_path, on_epoch=epochs.append)
    assert final.exists() and len(epochs) == 1 and np.isfinite(epochs[0].loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_each_method_names_the_settings_a_run_of_so_many_epochs_leaves_untrained():
    assert SmoothAdvParams(warmup=5).wasted_settings(5) == []
    assert SmoothAdvParams(warmup=6).wasted_settings(5) == [
        "warmup = 6 is longer than the 5 epoch(s) of training, so the ramp-up of the attack radius never finishes"]
    assert ConsistencyParams(warmup=6).wasted_settings(5) == []  # no attack to ramp up
    assert len(ConsistencyParams(warmup=6, adversarial=True).wasted_settings(5)) == 1
    assert MacerParams(deferred_epochs=4).wasted_settings(5) == []
    assert MacerParams(deferred_epochs=5).wasted_settings(5) == [
        "deferred_epochs = 5 covers all 5 epoch(s), so MACER's robustness term is never trained"]
    assert StabilityParams().wasted_settings(1) == []
