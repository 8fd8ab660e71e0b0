"""The model rewrites used for speed: each must leave the function, its gradients and the checkpoints alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from smx.science.analysis import confidence_under_attack
from smx.science.methods import smoothmix
from smx.science.methods.base import StepContext
from smx.science.methods.params import SmoothMixParams
from smx.science.models import build_model
from smx.science.rewrites import (
    PairwiseMaxPool2d,
    PooledConv2d,
    SingleChannelConv2d,
    bias_after_pooling,
    fast_image_gradients,
    pairwise_max_pooling,
    pool_before_relu,
    relu_in_place,
)
from smx.science.smoothing import prepare_for_certification
from smx.science.training import prepare_for_training


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return build_model("lenet", "mnist-mini")


def test_pooling_moved_before_relu_gives_the_same_values_and_gradients_exactly(lenet):
    reordered = copy.deepcopy(lenet)
    pool_before_relu(reordered)
    layers = [type(layer).__name__ for layer in reordered.modules()
              if isinstance(layer, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Linear))]
    assert layers == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Linear", "ReLU", "Linear"]
    inputs = torch.randn(32, 1, 28, 28)
    for model in (lenet, reordered):
        image = inputs.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(image), torch.arange(32) % 10).backward()
        model.image_gradient = image.grad
    assert torch.equal(reordered(inputs), lenet(inputs))
    assert torch.equal(reordered.image_gradient, lenet.image_gradient)
    for (name, original), (_, moved) in zip(lenet.named_parameters(), reordered.named_parameters()):
        assert torch.equal(original.grad, moved.grad), name


def test_bias_after_pooling_gives_the_same_values_gradients_and_checkpoints(lenet):
    lenet.eval()
    rewritten = copy.deepcopy(lenet)
    pool_before_relu(rewritten)
    bias_after_pooling(rewritten)
    relu_in_place(rewritten)
    layers = [type(layer).__name__ for layer in rewritten[1]]
    assert layers == ["PooledConv2d", "ReLU", "PooledConv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert all(layer.inplace for layer in rewritten.modules() if isinstance(layer, nn.ReLU))
    assert list(rewritten.state_dict()) == list(lenet.state_dict())

    inputs = torch.randn(32, 1, 28, 28)
    # A convolution without its bias may sum in another order (oneDNN adds the bias inside its kernel).
    assert torch.allclose(rewritten(inputs), lenet(inputs), atol=1e-6)
    for model in (lenet, rewritten):
        image = inputs.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(image), torch.arange(32) % 10).backward()
        model.image_gradient = image.grad
    assert torch.allclose(rewritten.image_gradient, lenet.image_gradient, atol=1e-7)
    for (name, original), (_, moved) in zip(lenet.named_parameters(), rewritten.named_parameters()):
        assert torch.allclose(moved.grad, original.grad, rtol=1e-5, atol=1e-7), name

    rebuilt = build_model("lenet", "mnist-mini").eval()
    rebuilt.load_state_dict(rewritten.state_dict())
    assert torch.equal(rebuilt(inputs), lenet(inputs))
    assert torch.equal(rewritten(inputs).argmax(dim=1), lenet(inputs).argmax(dim=1))


def test_bias_after_pooling_keeps_a_convolution_without_bias_and_leaves_other_layers():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.MaxPool2d(2), nn.Conv2d(3, 3, 3), nn.ReLU())
    expected = model(torch.ones(1, 1, 12, 12))
    bias_after_pooling(model)
    assert [type(layer) for layer in model] == [PooledConv2d, nn.Conv2d, nn.ReLU]
    assert torch.allclose(model(torch.ones(1, 1, 12, 12)), expected, atol=1e-6)


@pytest.mark.parametrize("size", [(24, 24), (8, 8), (7, 9)])
def test_pairwise_max_pooling_gives_max_pool2d_s_values_with_ties_infinities_and_nans(size):
    torch.manual_seed(2)
    # Few distinct values, so that many windows hold ties.
    inputs = torch.randint(-3, 3, (5, 20, *size)).float()
    inputs.view(-1)[torch.randperm(inputs.numel())[:40]] = float("nan")
    inputs.view(-1)[torch.randperm(inputs.numel())[:40]] = float("inf")
    inputs.view(-1)[torch.randperm(inputs.numel())[:40]] = -float("inf")
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    pairwise = nn.MaxPool2d(2)
    pairwise_max_pooling(pairwise)
    assert type(pairwise) is PairwiseMaxPool2d
    with torch.inference_mode():
        found, expected = pairwise(inputs), nn.functional.max_pool2d(inputs, 2)
    assert found.shape == expected.shape
    assert found.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(found, expected, rtol=0, atol=0, equal_nan=True)


def test_pairwise_max_pooling_leaves_gradients_and_other_layouts_to_max_pool2d():
    inputs = torch.randint(-2, 2, (3, 4, 6, 6)).float().contiguous(memory_format=torch.channels_last)
    pairwise = PairwiseMaxPool2d(2)
    for layout in (torch.contiguous_format, torch.channels_last):
        image = inputs.clone().contiguous(memory_format=layout).requires_grad_(True)
        reference = inputs.clone().requires_grad_(True)
        pairwise(image).sum().backward()
        nn.functional.max_pool2d(reference, 2).sum().backward()
        # Ties: max_pool2d gives each window's gradient to one element, torch.maximum would split it.
        assert torch.equal(image.grad, reference.grad)
    with torch.inference_mode():
        assert torch.equal(pairwise(inputs.contiguous()), nn.functional.max_pool2d(inputs, 2))


def test_pairwise_max_pooling_takes_only_two_by_two_windows_of_stride_two():
    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d((2, 2), stride=(2, 2)), nn.MaxPool2d(3, 2, 1),
                          nn.MaxPool2d(2, stride=1), nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, padding=1),
                          nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(2, return_indices=True))
    pairwise_max_pooling(model)
    assert [type(layer) is PairwiseMaxPool2d for layer in model] == [True, True] + [False] * 6


def test_certification_on_a_cpu_pools_pairwise_with_the_same_outputs(lenet):
    prepared = prepare_for_certification(copy.deepcopy(lenet), "cpu")
    assert sum(isinstance(layer, PairwiseMaxPool2d) for layer in prepared.modules()) == 2
    pooled_by_max_pool2d = copy.deepcopy(prepared)
    for layer in pooled_by_max_pool2d.modules():
        if isinstance(layer, PairwiseMaxPool2d):
            layer.__class__ = nn.MaxPool2d
    inputs = torch.rand(64, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(prepared(inputs), pooled_by_max_pool2d(inputs))


def test_in_place_relu_only_where_its_input_is_a_fresh_tensor():
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    relu_in_place(model)
    assert [getattr(layer, "inplace", None) for layer in model] == [False, None, False, None, True]


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"), [(5, 1, 0, 28), (5, 2, 2, 28), (3, 1, 1, 9), (4, 3, 0, 17)]
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_single_channel_image_gradient_matches_the_convolution_s_own(kernel, stride, padding, size, layout):
    torch.manual_seed(1)
    plain = nn.Conv2d(1, 7, kernel, stride=stride, padding=padding).to(memory_format=layout)
    fast = copy.deepcopy(plain)
    fast_image_gradients(fast)
    assert isinstance(fast, SingleChannelConv2d)
    fast.requires_grad_(False)
    images = torch.randn(6, 1, size, size)
    gradients = []
    for layer in (plain, fast):
        image = images.clone().requires_grad_(True)
        output = layer(image)
        upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
        upstream = upstream.contiguous(memory_format=layout)
        (gradient,) = torch.autograd.grad(output, image, upstream)
        gradients.append((output, gradient))
    (plain_output, plain_gradient), (fast_output, fast_gradient) = gradients
    assert torch.equal(fast_output, plain_output)
    assert fast_gradient.shape == images.shape
    assert torch.allclose(fast_gradient, plain_gradient, rtol=1e-5, atol=1e-5)
    assert fast_output.grad_fn.name().endswith("SingleChannelImageGradientBackward")


def test_a_layer_that_trains_keeps_the_convolution_s_own_backward():
    torch.manual_seed(1)
    plain = nn.Conv2d(1, 4, 3)
    fast = copy.deepcopy(plain)
    fast_image_gradients(fast)
    images = torch.randn(2, 1, 8, 8)
    for layer in (plain, fast):
        layer(images).square().sum().backward()
    assert torch.equal(fast.weight.grad, plain.weight.grad) and torch.equal(fast.bias.grad, plain.bias.grad)
    assert fast(images).grad_fn.name() == plain(images).grad_fn.name()


def test_a_frozen_weight_with_a_bias_that_trains_keeps_the_convolution_s_own_backward():
    torch.manual_seed(1)
    plain = nn.Conv2d(1, 4, 3)
    fast = copy.deepcopy(plain)
    fast_image_gradients(fast)
    images = torch.randn(2, 1, 8, 8, requires_grad=True)
    for layer in (plain, fast):
        layer.weight.requires_grad_(False)
        layer(images).square().sum().backward()
    assert fast.bias.grad is not None and torch.equal(fast.bias.grad, plain.bias.grad)


def test_only_single_channel_convolutions_change_class_and_parameters_stay_the_same_objects():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(1, 2, 3, groups=1, dilation=2))
    weights = [layer.weight for layer in model]
    keys = list(model.state_dict())
    fast_image_gradients(model)
    assert [type(layer) for layer in model] == [SingleChannelConv2d, nn.Conv2d, nn.Conv2d]
    assert [layer.weight for layer in model] == weights
    assert list(model.state_dict()) == keys


def test_the_image_gradient_runs_under_bf16_autocast():
    layer = nn.Conv2d(1, 4, 3).requires_grad_(False)
    fast_image_gradients(layer)
    image = torch.rand(3, 1, 10, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (gradient,) = torch.autograd.grad(layer(image).float().sum(), image)
    assert gradient.dtype == torch.float32 and gradient.shape == image.shape and gradient.abs().sum() > 0


def test_a_prepared_model_attacks_and_trains_like_the_model_as_built(lenet):
    prepared = copy.deepcopy(lenet)
    prepare_for_training(prepared, torch.device("cpu"))
    assert any(isinstance(layer, SingleChannelConv2d) for layer in prepared.modules())
    assert all(parameter.is_contiguous(memory_format=torch.channels_last)
               for parameter in prepared.parameters() if parameter.ndim == 4)
    inputs, targets = torch.rand(8, 1, 28, 28), torch.arange(8)
    context = StepContext(params=SmoothMixParams(steps=2, noise_samples=2, eta=1.0), epoch=0, epochs=1,
                          num_classes=10)
    losses, gradients = [], []
    for model in (lenet, prepared):
        torch.manual_seed(5)
        output = smoothmix.loss(model, inputs, targets, 0.5, context)
        output.loss.backward()
        losses.append(output.loss.item())
        gradients.append(model[1][0].weight.grad)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(gradients[1], gradients[0], rtol=1e-4, atol=1e-6)
    rebuilt = build_model("lenet", "mnist-mini")
    rebuilt.load_state_dict(prepared.state_dict())
    assert torch.allclose(rebuilt(inputs), lenet(inputs), atol=1e-6)


def test_the_analysis_job_s_preparation_leaves_its_numbers_alone(lenet):
    """The analyze job runs attacks and Monte-Carlo estimates on a model prepared for certification with fast
    image gradients: in-place ReLUs must not disturb the attacks' backward passes."""
    prepared = prepare_for_certification(copy.deepcopy(lenet), "cpu")
    fast_image_gradients(prepared)
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    found = []
    for model in (lenet.eval(), prepared):
        torch.manual_seed(0)
        found.append(confidence_under_attack(model, images, labels, range(4), epsilons=[1.0], attack_steps=3,
                                             attack_noise_samples=2, sigma=0.5, mc_samples=64, batch_size=64,
                                             num_classes=10))
    assert len(found[0]) == len(found[1]) == 4
    for built, fast in zip(*found):
        assert fast.distance == pytest.approx(built.distance, abs=1e-4)
        assert fast.prediction == built.prediction
        assert fast.true_confidence == pytest.approx(built.true_confidence, abs=2 / 64)
        assert fast.off_class_confidence == pytest.approx(built.off_class_confidence, abs=2 / 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bias moves after pooling on CUDA only")
def test_certification_on_cuda_adds_the_bias_after_pooling_with_the_same_predictions(lenet, monkeypatch):
    inputs = torch.rand(4096, 1, 28, 28, device="cuda")
    plain = copy.deepcopy(lenet).cuda().eval()
    prepared = prepare_for_certification(copy.deepcopy(lenet), "cuda")
    assert sum(isinstance(layer, PooledConv2d) for layer in prepared.modules()) == 2
    # fp32 convolutions, as certification runs them (PyTorch's default lets cuDNN use TF32).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    with torch.inference_mode():
        expected, found = plain(inputs), prepared(inputs)
    assert torch.allclose(found, expected, atol=1e-6)
    assert torch.equal(found.argmax(dim=1), expected.argmax(dim=1))
