import pytest
import torch
import torch.nn.functional as F

from smx.science.methods import attacks, gaussian, load_method, method_names, smoothmix
from smx.science.methods.base import StepContext, add_noise, draw_noise
from smx.science.methods.params import GaussianParams, SmoothMixParams
from smx.science.models import build_model

SIGMA = 0.5


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("lenet", "mnist-mini")


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    # Mid-grey images far from 0 and 1, so a few unit steps never reach the clamp.
    inputs = 0.5 + 0.01 * torch.rand(6, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (6,), generator=generator)
    return inputs, targets


def context(params, epoch=0, epochs=10):
    return StepContext(params=params, epoch=epoch, epochs=epochs, num_classes=10)


def test_every_registered_method_loads():
    assert {"gaussian", "smoothmix"} <= set(method_names())
    for name in method_names():
        assert callable(load_method(name).loss)


def test_noise_is_noise_major():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 2, 2)
    noise = draw_noise(images, 4, SIGMA)
    noisy = add_noise(images, noise)
    assert noise.shape == (4, 3, 1, 2, 2) and noisy.shape == (12, 1, 2, 2)
    assert torch.equal(noisy[2 * 3 + 1], images[1] + noise[2, 1])


def test_gaussian_loss_is_cross_entropy_on_noisy_copies(model, batch):
    inputs, targets = batch
    params = GaussianParams(noise_samples=3)
    torch.manual_seed(5)
    output = gaussian.loss(model, inputs, targets, SIGMA, context(params))
    torch.manual_seed(5)
    noisy = add_noise(inputs, torch.randn(3, *inputs.shape) * SIGMA)
    assert output.noisy_logits.shape == (18, 10)
    assert torch.equal(output.noisy_targets, targets.repeat(3))
    assert torch.allclose(output.loss, F.cross_entropy(model(noisy), targets.repeat(3)))


def test_attack_step_is_a_per_image_normalised_ascent_of_length_alpha(model, batch):
    inputs, targets = batch
    torch.manual_seed(2)
    noise = draw_noise(inputs, 2, SIGMA)
    start, adversary = attacks.smoothed_adversary(model, inputs, targets, noise, steps=1, step_size=0.3)
    assert torch.equal(start, inputs)
    assert torch.allclose((adversary - inputs).flatten(1).norm(dim=1), torch.full((6,), 0.3), atol=1e-5)

    # The direction is the gradient of -log of the noise-averaged softmax of the true class, image by image.
    moving = inputs.clone().requires_grad_(True)
    probabilities = F.softmax(model(add_noise(moving, noise)), dim=1).view(2, 6, 10).mean(dim=0)
    (gradient,) = torch.autograd.grad(-torch.log(probabilities[torch.arange(6), targets]).sum(), moving)
    direction = gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(adversary - inputs, 0.3 * direction, atol=1e-5)


def test_attack_leaves_the_model_as_it_found_it(model, batch):
    inputs, targets = batch
    model.train()
    model[1][0].weight.requires_grad_(False)
    flags = [parameter.requires_grad for parameter in model.parameters()]
    attacks.smoothed_adversary(model, inputs, targets, draw_noise(inputs, 1, SIGMA), steps=2, step_size=1.0)
    assert model.training
    assert [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())


def test_attack_respects_max_norm_and_the_pixel_range(model, batch):
    inputs, targets = batch
    noise = draw_noise(inputs, 1, SIGMA)
    _, bounded = attacks.smoothed_adversary(model, inputs, targets, noise, steps=4, step_size=1.0, max_norm=1.5)
    assert ((bounded - inputs).flatten(1).norm(dim=1) <= 1.5 + 1e-5).all()
    _, free = attacks.smoothed_adversary(model, inputs, targets, noise, steps=40, step_size=1.0)
    assert free.min() >= 0.0 and free.max() <= 1.0
    assert ((free - inputs).flatten(1).norm(dim=1) > 5.0).all()


def test_mix_step_one_starts_from_the_one_step_adversary(model, batch):
    inputs, targets = batch
    params = SmoothMixParams(steps=3, noise_samples=2, mix_step=1, alpha=0.4, warmup=1)
    torch.manual_seed(3)
    output = smoothmix.loss(model, inputs, targets, SIGMA, context(params))

    torch.manual_seed(3)
    noise = draw_noise(inputs, 2, SIGMA)
    _, one_step = attacks.smoothed_adversary(model, inputs, targets, noise, steps=1, step_size=0.4)
    expected = model(add_noise(one_step, noise))
    assert not torch.allclose(one_step, inputs)
    assert torch.allclose(output.noisy_logits, expected, atol=1e-5)


def test_one_step_radius_warms_up(model, batch):
    inputs, targets = batch
    params = SmoothMixParams(steps=2, noise_samples=1, mix_step=1, alpha=0.4, warmup=4)
    torch.manual_seed(3)
    output = smoothmix.loss(model, inputs, targets, SIGMA, context(params, epoch=0))

    torch.manual_seed(3)
    noise = draw_noise(inputs, 1, SIGMA)
    _, one_step = attacks.smoothed_adversary(model, inputs, targets, noise, steps=1, step_size=0.4)
    # In epoch 0 of a 4-epoch warm-up the start may move a quarter of alpha from the clean input.
    shrunk = inputs + (one_step - inputs) * (0.1 / (one_step - inputs).flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    assert torch.allclose(output.noisy_logits, model(add_noise(shrunk, noise)), atol=1e-5)


def test_mix_term_ignores_images_the_smoothed_classifier_gets_wrong(model, batch):
    inputs, _ = batch
    params = SmoothMixParams(steps=2, noise_samples=2, eta=5.0, warmup=1)
    torch.manual_seed(4)
    with torch.no_grad():
        predictions = model(add_noise(inputs, draw_noise(inputs, 2, SIGMA))).softmax(1).view(2, 6, 10).mean(0).argmax(1)
    wrong = (predictions + 1) % 10

    torch.manual_seed(4)
    all_wrong = smoothmix.loss(model, inputs, wrong, SIGMA, context(params))
    assert all_wrong.extras["mask_rate"] == 0.0
    assert all_wrong.extras["mix_loss"] == 0.0
    assert torch.equal(all_wrong.loss, F.cross_entropy(all_wrong.noisy_logits, wrong.repeat(2)))

    torch.manual_seed(4)
    all_right = smoothmix.loss(model, inputs, predictions, SIGMA, context(params))
    assert all_right.extras["mask_rate"] == 1.0
    assert all_right.extras["mix_loss"] > 0.0
    assert all_right.loss > all_right.extras["clean_loss"]


def test_mix_term_trains_through_the_soft_target(model, batch):
    """The soft target is not detached: the mix loss has a gradient even through the clean branch alone."""
    inputs, _ = batch
    params = SmoothMixParams(steps=1, noise_samples=1, eta=1.0, warmup=1)
    torch.manual_seed(6)
    with torch.no_grad():
        predictions = model(add_noise(inputs, draw_noise(inputs, 1, SIGMA))).argmax(1)
    torch.manual_seed(6)
    output = smoothmix.loss(model, inputs, predictions, SIGMA, context(params))
    clean_only = F.cross_entropy(output.noisy_logits, predictions)
    difference = torch.autograd.grad(output.loss - clean_only, output.noisy_logits)[0]
    assert difference.abs().max() > 0


def test_with_eta_zero_smoothmix_equals_gaussian(model, batch):
    inputs, targets = batch
    torch.manual_seed(7)
    smooth = smoothmix.loss(model, inputs, targets, SIGMA, context(SmoothMixParams(eta=0.0, steps=2, noise_samples=3)))
    smooth_gradients = torch.autograd.grad(smooth.loss, list(model.parameters()))
    torch.manual_seed(7)
    plain = gaussian.loss(model, inputs, targets, SIGMA, context(GaussianParams(noise_samples=3)))
    plain_gradients = torch.autograd.grad(plain.loss, list(model.parameters()))
    assert torch.equal(smooth.loss, plain.loss)
    assert torch.equal(smooth.noisy_logits, plain.noisy_logits)
    assert all(torch.equal(a, b) for a, b in zip(smooth_gradients, plain_gradients))
