"""Rewrites of a model, in place, that make it faster and leave the function it computes alone.

Pooling before ReLU and in-place ReLU give the same values bit for bit, as does the bias after pooling given the
same convolution sums; pairwise max-pooling gives the same numbers (a zero may come out as -0.0); the
single-channel image gradient is the same sum in another order (differences at fp32 rounding). None of them
adds, removes or renames a parameter, so a checkpoint written by a rewritten model loads into the model as
built, and back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable


def pool_before_relu(model: nn.Module) -> None:
    """Swap each nn.ReLU directly followed by an nn.MaxPool2d in an nn.Sequential.

    ReLU is monotone, so max(relu(a), relu(b)) = relu(max(a, b)) exactly, value for value; pooling first
    leaves the ReLU a quarter of the values of a 2x2 pool. Gradients are the same too: where a window's
    maximum is positive both orders route it to the same (first) maximal element, and where it is not, both
    give zero.
    """
    for sequential in model.modules():
        if isinstance(sequential, nn.Sequential):
            names = list(sequential._modules)
            for first, second in zip(names, names[1:]):
                relu, pool = sequential._modules[first], sequential._modules[second]
                if isinstance(relu, nn.ReLU) and isinstance(pool, nn.MaxPool2d):
                    sequential._modules[first], sequential._modules[second] = pool, relu


class PooledConv2d(nn.Conv2d):
    """nn.Conv2d and the max-pooling that followed it, with the bias added after the pooling (bias_after_pooling).

    max(x_i + b) = max(x_i) + b, and rounding is monotone, so fl(x_i + b) peaks where x_i does: the same values,
    given the same convolution sums. The bias then touches the pooled values only.
    """

    pool: nn.MaxPool2d

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self._conv_forward(input, self.weight, None))
        if self.bias is None:
            return pooled
        # In place: max-pooling keeps its input and indices for its backward pass, never its output.
        return pooled.add_(self.bias.view(1, -1, 1, 1))


def bias_after_pooling(model: nn.Module) -> None:
    """Make each nn.Conv2d directly followed by an nn.MaxPool2d in an nn.Sequential a PooledConv2d that runs both
    and adds its bias last; the pooling leaves the Sequential.

    On CUDA, PyTorch adds a convolution's bias in a kernel of its own, a full pass over the largest activation;
    after a 2x2 pooling the same bias touches a quarter of the values. (oneDNN adds the bias inside its CPU
    convolution, so there the pass does not exist.) The parameters keep their names: the pooling has none.
    """
    pairs = []
    for sequential in model.modules():
        if isinstance(sequential, nn.Sequential):
            names = list(sequential._modules)
            for first, second in zip(names, names[1:]):
                conv, pool = sequential._modules[first], sequential._modules[second]
                if type(conv) is nn.Conv2d and isinstance(pool, nn.MaxPool2d):
                    pairs.append((sequential, conv, second, pool))
    for sequential, conv, pool_name, pool in pairs:
        conv.__class__ = PooledConv2d
        conv.pool = pool
        del sequential._modules[pool_name]


class PairwiseMaxPool2d(nn.MaxPool2d):
    """A 2x2, stride-2 max-pooling of channels_last activations, as two elementwise maxima: rows, then columns.

    In channels_last memory the two rows of a window are two contiguous halves of one image row, and the two
    columns of the result adjacent channel vectors, so both maxima run over long contiguous runs; oneDNN's own
    channels_last pooling ran 2-3x slower on LeNet's first activation (benchmarks/passes.py). The maximum of
    four numbers is the same number in any order (tested, with ties, infinities and NaNs; of 0.0 and -0.0 either
    may come out, where nn.MaxPool2d keeps the first). With gradients the layer is nn.MaxPool2d's own, which
    routes a tie's gradient to one element where torch.maximum would split it.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.dim() != 4 or (torch.is_grad_enabled() and input.requires_grad)
                or not input.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(input)
        batch, channels, height, width = input.shape
        # Floor mode: an odd last row or column belongs to no window.
        rows = input.permute(0, 2, 3, 1)[:, : height // 2 * 2, : width // 2 * 2]
        rows = rows.reshape(batch, height // 2, 2, width // 2 * 2, channels)
        row_maxima = torch.maximum(rows[:, :, 0], rows[:, :, 1]).view(batch, height // 2, width // 2, 2, channels)
        return torch.maximum(row_maxima[:, :, :, 0], row_maxima[:, :, :, 1]).permute(0, 3, 1, 2)


def pairwise_max_pooling(model: nn.Module) -> None:
    """Make each 2x2, stride-2 nn.MaxPool2d without padding, dilation or ceil mode a PairwiseMaxPool2d.

    For CPUs: on CUDA, cuDNN's pooling was not measured against it.
    """
    for layer in model.modules():
        if (type(layer) is nn.MaxPool2d and _pair(layer.kernel_size) == (2, 2)
                and _pair(layer.stride) == (2, 2) and _pair(layer.padding) == (0, 0)
                and _pair(layer.dilation) == (1, 1) and not layer.ceil_mode and not layer.return_indices):
            layer.__class__ = PairwiseMaxPool2d


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


# Layers whose output is always a new tensor, never their input or a view of it.
_FRESH_OUTPUT_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d)


def relu_in_place(model: nn.Module) -> None:
    """Make each nn.ReLU that directly follows a fresh-output layer in an nn.Sequential compute in place.

    In a Sequential a layer's output goes to the next layer only, so overwriting it changes nothing else; the
    result is bit for bit the same. Other ReLUs are left alone: their input might be used again elsewhere.
    Gradients through the rewritten model (an attack's) stay right: none of those layers keeps its output for
    its own backward pass, and autograd raises rather than use a tensor that was overwritten.
    """
    for sequential in model.modules():
        if isinstance(sequential, nn.Sequential):
            layers = list(sequential)
            for previous, layer in zip(layers, layers[1:]):
                if isinstance(layer, nn.ReLU) and isinstance(previous, _FRESH_OUTPUT_LAYERS):
                    layer.inplace = True


class _SingleChannelImageGradient(torch.autograd.Function):
    """A convolution of single-channel images whose backward pass gives the images' gradient only.

    oneDNN computes that gradient as a convolution with one output channel, which it runs slowly: for LeNet's
    first layer on MNIST it took 27-32 ms per 256 images on one CPU core, ten times the forward pass. Here it
    is one matrix product (each output position's gradient spread over its window's taps) and one shifted
    add per tap: about 3 ms.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        images: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.image_shape = images.shape
        ctx.image_dtype = images.dtype
        ctx.stride, ctx.padding = stride, padding
        return nn.functional.conv2d(images, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, output_gradient: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        batch, _, height, width = ctx.image_shape
        channels, _, kernel_height, kernel_width = weight.shape
        _, _, out_height, out_width = output_gradient.shape
        (stride_y, stride_x), (pad_y, pad_x) = ctx.stride, ctx.padding
        # One row per output position (a view when the gradient is channels-last), so one product covers the batch.
        positions = output_gradient.permute(0, 2, 3, 1).reshape(-1, channels)
        taps = torch.mm(weight.reshape(channels, -1).t().to(positions.dtype), positions.t())
        taps = taps.view(kernel_height, kernel_width, batch, out_height, out_width)
        padded = positions.new_zeros(batch, height + 2 * pad_y, width + 2 * pad_x)
        for tap_y in range(kernel_height):
            for tap_x in range(kernel_width):
                rows = slice(tap_y, tap_y + stride_y * (out_height - 1) + 1, stride_y)
                columns = slice(tap_x, tap_x + stride_x * (out_width - 1) + 1, stride_x)
                padded[:, rows, columns] += taps[tap_y, tap_x]
        image_gradient = padded[:, pad_y : pad_y + height, pad_x : pad_x + width].reshape(batch, 1, height, width)
        return image_gradient.to(ctx.image_dtype), None, None, None, None


class SingleChannelConv2d(nn.Conv2d):
    """nn.Conv2d on single-channel images, with a fast gradient for the images on a CPU when the layer's own
    parameters are frozen, as they are inside an attack (_SingleChannelImageGradient). Everything else runs
    nn.Conv2d's own path."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
        if input.requires_grad and frozen and input.device.type == "cpu":
            return _SingleChannelImageGradient.apply(input, weight, bias, self.stride, self.padding)
        return super()._conv_forward(input, weight, bias)


def fast_image_gradients(model: nn.Module) -> None:
    """Make every plain convolution of single-channel images a SingleChannelConv2d. The layer stays the same
    object with the same parameters (it only changes class), so optimizers and state dicts are unaffected."""
    for layer in model.modules():
        if (
            type(layer) is nn.Conv2d
            and layer.in_channels == 1
            and layer.groups == 1
            and layer.dilation == (1, 1)
            and layer.padding_mode == "zeros"
            and isinstance(layer.padding, tuple)
        ):
            layer.__class__ = SingleChannelConv2d
