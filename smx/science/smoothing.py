"""Randomized smoothing (Cohen et al., 2019): CERTIFY and PREDICT. Their bound on pA and radius are in bounds.py.

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), is estimated by counting the
base classifier f's predictions on noisy copies of x. CERTIFY returns a class and an l2 radius that are
correct with probability at least 1 - alpha over the noise; PREDICT returns g(x) with the same guarantee, or
abstains. Everything runs in IEEE fp32 unless a caller opts in to bf16 (Voráček & Hein, 2023: reduced precision
can produce false certificates); on CUDA that means TF32 convolutions are switched off while certifying.

Speed (docs/performance.md): the draws of several images share forward passes, predictions are counted on the
device, and there is one host sync per group of images. `prepare_for_certification` and `forward_batch_size`
pick the model layout and the rows per pass for a device; neither changes the statistics, and the rows per pass
do not change the noise either: each image's noise comes from a generator of its own (_NoiseDraws).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from smx.errors import exception_chain
from smx.science.bounds import certified_radius, lower_confidence_bound
from smx.science.metrics import ABSTAIN
from smx.science.rewrites import bias_after_pooling, pairwise_max_pooling, pool_before_relu, relu_in_place
from smx.science.seeds import derived_seed

# Images that share one host sync are sized to fill this many forward passes: the sync idles the device
# while the host turns counts into certificates, and each group ends in at most one partly filled pass.
_PASSES_PER_SYNC = 8

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")

# Rows per forward pass on a CPU, where large passes outgrow the caches. On a 2-core Xeon (docs/performance.md),
# LeNet ran alike at 128-400 rows and 30% slower at 1000; CIFAR ResNet-20 ran 20% slower at 400 than at 100.
CPU_FORWARD_BATCH = 256
# A certification pass may use at most this share of the GPU memory that is free when it starts: jobs packed
# on one GPU (--jobs-per-gpu) each find the memory the earlier ones left, and cuDNN needs workspace on top.
GPU_MEMORY_SHARE = 0.5
# Rows per pass on a GPU when no batch_size bounds them: past this, a LeNet pass is tens of milliseconds of
# arithmetic on an H100, so larger ones would save no launch worth having (the probe chose 38,414 under it there).
GPU_FORWARD_BATCH = 65_536
# Rows of the trial forward pass that measures a model's memory per row on a GPU.
PROBE_ROWS = 32
# Each image's noise is drawn in chunks of this many bytes (see _NoiseDraws): large enough that a GPU pass of
# tens of thousands of LeNet draws needs only a few random-number kernels, small next to a pass's own memory.
NOISE_CHUNK_BYTES = 8 * 2**20


@dataclass
class Certificate:
    """CERTIFY's answer for one test image."""

    index: int  # position in the dataset
    label: int
    prediction: int  # ABSTAIN when the lower bound on pA is below 1/2
    radius: float  # 0.0 on abstain
    correct: int  # 1 if prediction == label else 0
    pa_lower: float
    count: int  # estimation draws, out of n, on which the base classifier chose the selected class
    seconds: float  # wall time attributed to this image


def certify(
    model: torch.nn.Module,
    image: torch.Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    num_classes: int,
) -> tuple[int, float, float, int]:
    """CERTIFY one image (C, H, W): returns (prediction, radius, pa_lower, count).

    The class is chosen on n0 draws and its probability bounded on n independent draws; prediction is
    ABSTAIN and radius 0.0 when that bound is below 1/2.
    """
    with evaluating(model):
        images = image.unsqueeze(0).to(model_device(model), torch.float32)
        counts = count_predictions(model, images, (n0, n), sigma, batch_size, num_classes)
    return _certify_from_counts(counts, n, alpha, sigma)[0]


def certify_dataset(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    indices: Sequence[int],
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    num_classes: int,
    on_certificate: Callable[[Certificate], None] | None = None,
    device: torch.device | str | None = None,
    precision: Precision = "fp32",
    seed: int | None = None,
) -> list[Certificate]:
    """CERTIFY each of images (N, C, H, W) with the statistics of `certify`, but many images per pass.

    images[k] has label labels[k] and is image indices[k] of its dataset; the index is only recorded in
    its certificate. Each image gets its own n0 selection and n estimation draws; the draws of several
    images share forward passes of at most batch_size rows and are counted on the device, with one host
    sync per group of images. on_certificate receives each certificate, in order, as soon as its group is
    done, so a caller can store it and resume later with the images not yet certified. device defaults to
    the model's; images may live on the host. precision "bf16" runs the forward passes under bf16 autocast
    (noise is still drawn and added in fp32): faster, but the certificates may be unsound; the caller must
    record that it asked for it. With a seed, the noise of image indices[k] comes from a generator seeded with
    image_noise_seed(seed, indices[k]): its certificate then depends on neither batch_size nor the other images
    certified with it (otherwise torch's global generator seeds each image).
    """
    if not len(images) == len(labels) == len(indices):
        raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(indices)} indices: need one each")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device) if device is not None else model_device(model)
    images_per_group = images_per_sync(batch_size, n0 + n)
    certificates = []
    with evaluating(model):
        for group_start in range(0, len(indices), images_per_group):
            group_stop = min(group_start + images_per_group, len(indices))
            group_started = time.perf_counter()
            group_images = images[group_start:group_stop].to(device, torch.float32)
            group_indices = indices[group_start:group_stop]
            seeds = None if seed is None else [image_noise_seed(seed, index) for index in group_indices]
            counts = count_predictions(model, group_images, (n0, n), sigma, batch_size, num_classes, precision, seeds)
            answers = _certify_from_counts(counts, n, alpha, sigma)
            seconds = (time.perf_counter() - group_started) / (group_stop - group_start)
            for position, (prediction, radius, pa_lower, count) in zip(range(group_start, group_stop), answers):
                label = int(labels[position])
                certificate = Certificate(
                    index=int(indices[position]),
                    label=label,
                    prediction=prediction,
                    radius=radius,
                    correct=int(prediction == label),
                    pa_lower=pa_lower,
                    count=count,
                    seconds=seconds,
                )
                certificates.append(certificate)
                if on_certificate is not None:
                    on_certificate(certificate)
    return certificates


def image_noise_seed(seed: int, index: int) -> int:
    """The seed of the generator that draws the noise of image `index` of a dataset, for an experiment's seed.
    Distinct for the images of one experiment, and from the seed training draws its noise from; the same for a
    given image across the experiment's configs, which then see the same noise."""
    return derived_seed(seed, "certify", index)


def images_per_sync(batch_size: int, draws_per_image: int) -> int:
    """How many images certify_dataset certifies between two host syncs: as many as fill _PASSES_PER_SYNC
    forward passes of batch_size rows."""
    return max(1, min(batch_size, math.ceil(_PASSES_PER_SYNC * batch_size / draws_per_image)))


def predict(
    model: torch.nn.Module,
    image: torch.Tensor,
    sigma: float,
    n: int,
    alpha: float,
    batch_size: int,
    num_classes: int,
) -> int:
    """PREDICT one image (C, H, W): the top class over n draws, or ABSTAIN when a two-sided binomial test
    cannot tell it from the runner-up at level alpha."""
    from scipy.stats import binomtest  # here, so that certify jobs never import scipy.stats (see the imports)

    with evaluating(model):
        images = image.unsqueeze(0).to(model_device(model), torch.float32)
        counts = count_predictions(model, images, (n,), sigma, batch_size, num_classes)[0, 0]
        if num_classes == 1:  # no runner-up: it counts as a class that was never predicted
            counts = torch.cat((counts, counts.new_zeros(1)))
        top_counts, top_classes = counts.topk(2)
    [top_count, runner_up_count], [top_class, _] = torch.stack((top_counts, top_classes)).tolist()
    if binomtest(top_count, top_count + runner_up_count, p=0.5).pvalue > alpha:
        return ABSTAIN
    return top_class


def count_predictions(
    model: torch.nn.Module,
    images: torch.Tensor,
    draws_per_phase: Sequence[int],
    sigma: float,
    batch_size: int,
    num_classes: int,
    precision: Precision = "fp32",
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """How often the base classifier predicts each class on noisy copies of each image.

    Returns int64 counts of shape (images, phases, num_classes) on the images' device. Every draw gets its
    own noise, so the phases (CERTIFY's selection and estimation) are independent samples. The draws are
    laid out image after image, phase after phase, and cut into forward passes of at most batch_size rows:
    a pass holds the draws of several images when n is small and a slice of one image's draws when n is
    large, so memory depends on batch_size only. Image k's noise comes from a generator seeded with seeds[k]
    (by default, seeds drawn from torch's global generator), so its counts do not depend on batch_size or on
    the other images.
    """
    if batch_size < 1 or min(draws_per_phase) < 1:
        raise ValueError(f"batch_size and the numbers of draws must be positive, got {batch_size}, {draws_per_phase}")
    device = images.device
    num_images, num_phases = images.shape[0], len(draws_per_phase)
    if seeds is None:
        seeds = torch.randint(2**31 - 1, (num_images,)).tolist()
    if len(seeds) != num_images:
        raise ValueError(f"{num_images} images and {len(seeds)} seeds: need one seed per image")
    draws_per_image = sum(draws_per_phase)
    noise = _NoiseDraws(seeds, draws_per_image, images.shape[1:], device)
    # A draw's phase is the number of phase starts at or before its position within its image.
    phase_starts = torch.tensor(list(itertools.accumulate(draws_per_phase))[:-1], dtype=torch.int64, device=device)
    counts = torch.zeros(num_images * num_phases * num_classes, dtype=torch.int64, device=device)
    total_draws = num_images * draws_per_image
    with _forward_precision(precision, device):
        for first_draw in range(0, total_draws, batch_size):
            draws = torch.arange(first_draw, min(first_draw + batch_size, total_draws), device=device)
            image_of_draw = draws // draws_per_image
            phase_of_draw = torch.bucketize(draws % draws_per_image, phase_starts, right=True)
            noisy = torch.empty((len(draws), *images.shape[1:]), dtype=images.dtype, device=device)
            noise.add_to_images(noisy, images, sigma, first_draw)
            logits = model(noisy)
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model returns {logits.shape[1]} logits, expected num_classes = {num_classes}")
            cells = (image_of_draw * num_phases + phase_of_draw) * num_classes + logits.argmax(dim=1)
            # scatter_add_ rather than bincount: on CUDA, bincount reads its largest input back to the host.
            counts.scatter_add_(0, cells, torch.ones_like(cells))
    return counts.view(num_images, num_phases, num_classes)


class _NoiseDraws:
    """The standard normal noise of count_predictions's draws, image after image.

    Image k's draws come from a generator seeded with seeds[k], in chunks of a fixed number of rows (that of
    NOISE_CHUNK_BYTES), one chunk after the other. So the noise of a draw is a function of its image's seed and
    its place among that image's draws, whatever the rows per pass and whichever images share them: a resumed
    job, a job on a GPU with less free memory, or one with another batch_size draws the same noise. Drawing a
    tensor in two calls would not do: torch's generators give other numbers for other call sizes, on CUDA in
    particular. Passes must ask for the draws in order.
    """

    def __init__(self, seeds: Sequence[int], draws_per_image: int, image_shape: Sequence[int],
                 device: torch.device) -> None:
        self.seeds = seeds
        self.draws_per_image = draws_per_image
        self.image_shape = tuple(image_shape)
        self.chunk_rows = max(1, NOISE_CHUNK_BYTES // (4 * math.prod(self.image_shape)))
        self.generator = torch.Generator(device=device)
        self.image = -1
        self.chunk = torch.empty(0)
        self.chunk_start = 0  # the position of self.chunk's first row among its image's draws

    def add_to_images(self, noisy: torch.Tensor, images: torch.Tensor, sigma: float, first_draw: int) -> None:
        """Fill noisy[r] with the clean image of draw first_draw + r plus sigma times that draw's noise."""
        position, end = first_draw, first_draw + len(noisy)
        while position < end:
            image, draw = divmod(position, self.draws_per_image)
            chunk = self._chunk_holding(image, draw)
            rows = min(end - position, self.chunk_start + len(chunk) - draw)
            row_in_chunk, row_in_pass = draw - self.chunk_start, position - first_draw
            torch.add(images[image], chunk[row_in_chunk : row_in_chunk + rows], alpha=sigma,
                      out=noisy[row_in_pass : row_in_pass + rows])
            position += rows

    def _chunk_holding(self, image: int, draw: int) -> torch.Tensor:
        if image != self.image:
            self.image, self.chunk_start = image, 0
            self.generator.manual_seed(self.seeds[image])
            self.chunk = self._next_chunk()
        while draw >= self.chunk_start + len(self.chunk):
            self.chunk_start += len(self.chunk)
            self.chunk = self._next_chunk()
        return self.chunk

    def _next_chunk(self) -> torch.Tensor:
        rows = min(self.chunk_rows, self.draws_per_image - self.chunk_start)
        return torch.randn((rows, *self.image_shape), generator=self.generator, device=self.generator.device)


def _certify_from_counts(
    counts: torch.Tensor, n: int, alpha: float, sigma: float
) -> list[tuple[int, float, float, int]]:
    """CERTIFY's decision for each image from its (selection, estimation) counts, with one host sync."""
    guesses = counts[:, 0].argmax(dim=1)
    guess_counts = counts[:, 1].gather(1, guesses.unsqueeze(1)).squeeze(1)
    answers = []
    for guess, count in torch.stack((guesses, guess_counts), dim=1).tolist():
        pa_lower = lower_confidence_bound(count, n, alpha)
        if pa_lower < 0.5:
            answers.append((ABSTAIN, 0.0, pa_lower, count))
        else:
            answers.append((guess, certified_radius(pa_lower, sigma), pa_lower, count))
    return answers


def prepare_for_certification(
    model: torch.nn.Module, device: torch.device | str, compile_model: bool = False
) -> torch.nn.Module:
    """The model on `device` in eval mode, changed in place for fast inference, ready for certify_dataset.

    - On a CPU, channels_last weights let oneDNN run convolutions without reordering every activation:
      LeNet certified 2x faster with them. On CUDA they are slower (cuDNN's NHWC fp32 kernels and layout
      conversions: LeNet 2.3 against 2.9 M draws/s NCHW on an H100), so the model stays NCHW there.
    - A max-pooling that directly follows a ReLU runs first (see rewrites.pool_before_relu): the ReLU then touches a
      quarter of the values. ReLUs whose input nothing else can hold run in place (see rewrites.relu_in_place),
      which saves writing a new activation: another third faster for LeNet on a CPU.
    - On a CPU, 2x2 max-poolings run as two elementwise maxima (rewrites.pairwise_max_pooling): +5-10% for LeNet.
    - On CUDA, a convolution's bias is added after the max-pooling that follows it (rewrites.bias_after_pooling):
      PyTorch adds it there in a pass of its own over the largest activation. oneDNN adds it inside its CPU
      convolutions, so CPUs keep the layers as they are.
    - On CUDA, cuDNN autotuning: a process-wide setting (each smx job is its own process) that pays off
      because every pass but a group's last has the same shape.
    compile_model wraps the model in torch.compile: opt-in, since compiling takes tens of seconds on a CPU and
    pays for itself only over long runs (docs/performance.md). None of this changes the statistics.
    """
    device = torch.device(device)
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = model.to(device, memory_format=layout).eval()
    pool_before_relu(model)
    if device.type == "cpu":
        pairwise_max_pooling(model)
    if device.type == "cuda":
        bias_after_pooling(model)
    relu_in_place(model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return torch.compile(model) if compile_model else model


def missing_cxx_compiler(error: BaseException) -> str | None:
    """Inductor's complaint when torch.compile failed for want of a C++ compiler, else None. Its InvalidCxxCompiler
    comes at the first forward pass of a compiled model, wrapped by Dynamo in a BackendCompilerFailed."""
    # Imported here: torch._inductor takes seconds to import, and only a compiled model can have raised this.
    from torch._inductor.exc import InvalidCxxCompiler

    return next((str(cause) for cause in exception_chain(error) if isinstance(cause, InvalidCxxCompiler)), None)


def forward_batch_size(
    model: torch.nn.Module,
    image_shape: Sequence[int],
    batch_size: int | None,
    device: torch.device | str | None = None,
    precision: Precision = "fp32",
) -> int:
    """Rows per forward pass for certifying images of `image_shape` on `device`: never more than batch_size.

    batch_size, where given, bounds memory; within it, a GPU gets as many rows as fit in GPU_MEMORY_SHARE of its
    free memory, measured with one trial pass, up to GPU_FORWARD_BATCH without a bound, and a CPU (or any other
    device) CPU_FORWARD_BATCH rows: cache-sized passes are faster. The rows per pass change no draw's noise (see
    _NoiseDraws).
    """
    device = torch.device(device) if device is not None else model_device(model)
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return rows_that_fit(free_bytes, _gpu_bytes_per_row(model, image_shape, device, precision),
                             GPU_FORWARD_BATCH if batch_size is None else batch_size)
    return min(batch_size or CPU_FORWARD_BATCH, CPU_FORWARD_BATCH)


def rows_that_fit(free_bytes: int, bytes_per_row: float, batch_size: int) -> int:
    """Rows whose memory fits in GPU_MEMORY_SHARE of free_bytes, between 1 and batch_size."""
    return max(1, min(batch_size, int(GPU_MEMORY_SHARE * free_bytes / max(bytes_per_row, 1.0))))


def _gpu_bytes_per_row(
    model: torch.nn.Module, image_shape: Sequence[int], device: torch.device, precision: Precision
) -> float:
    """Peak GPU memory of a certification pass per row: one trial pass of PROBE_ROWS, plus twice a row of input:
    count_predictions holds the pass's noisy images and a chunk of noise (see _NoiseDraws) next to it."""
    input_bytes = math.prod(image_shape) * 4  # fp32
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device)
    with evaluating(model), _forward_precision(precision, device):
        model(torch.zeros((PROBE_ROWS, *image_shape), device=device))
    peak = torch.cuda.max_memory_allocated(device) - allocated_before
    return peak / PROBE_ROWS + 2 * input_bytes


@contextmanager
def _forward_precision(precision: Precision, device: torch.device) -> Iterator[None]:
    """fp32: IEEE fp32, so on CUDA cuDNN's default TF32 convolutions (10-bit mantissas) are off for the duration.
    bf16: bf16 autocast of the forward passes."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    tf32_flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32_flags


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without autograd for the duration, then the model's own mode again."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters; the CPU for a model without any."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
