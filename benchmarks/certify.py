"""Certification throughput: smx's certify_dataset against the published CERTIFY loop, in one process.

The reference loop is Cohen et al.'s `Smooth.certify` (code/core.py, copied by every later repository) as
published: one image at a time, its selection and estimation draws in separate passes of at most --batch noisy
copies, predictions copied to the host after every pass and counted there, an NCHW model under torch.no_grad.
It counts with numpy's bincount where the published `_count_arr` loops in Python, so it is a little faster
than the original. smx runs `prepare_for_certification`, `forward_batch_size` and `certify_dataset`, exactly
as the certify job does. Both use the same weights and the same n0, n, alpha and sigma; rounds alternate
between them so that a loaded machine slows both alike, and the ratio is the median of per-round ratios.

Peak memory is measured for each implementation in a fresh process, over its first run on two images (so it
includes one-time allocations such as oneDNN's caches): torch.cuda.max_memory_allocated on CUDA; on a CPU
(Linux), the largest growth of the resident set over its size at the start, sampled every millisecond after
malloc_trim has handed freed memory back to the system.

    python benchmarks/certify.py --device cpu --threads 1
    python benchmarks/certify.py --device cuda --images 100 --n 10000 --batch 1000
    python benchmarks/certify.py --arch cifar_resnet110 --device cuda --images 10 --n 10000
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import memory_in_fresh_process, print_peak_memory, synchronize  # noqa: E402
from smx.science.data import load_dataset  # noqa: E402
from smx.science.models import build_model  # noqa: E402
from smx.science.smoothing import (  # noqa: E402
    ABSTAIN,
    PRECISIONS,
    certified_radius,
    certify_dataset,
    forward_batch_size,
    lower_confidence_bound,
    prepare_for_certification,
)

NUM_CLASSES = 10
DATASET_OF_ARCH = {"lenet": "mnist-mini", "cifar_resnet20": "cifar10", "cifar_resnet110": "cifar10"}
IMPLEMENTATIONS = ("reference", "smx")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--arch", default="lenet", choices=sorted(DATASET_OF_ARCH))
    parser.add_argument("--images", type=int, default=10, help="test images certified per round")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=400,
                        help="the reference's batch, and the certify.batch_size smx chooses its passes within")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds of each implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="smx's forward precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile smx's model")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--skip-reference", action="store_true", help="time smx alone (for long runs)")
    parser.add_argument("--memory-of", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # internal: one measurement
    return parser.parse_args()


def test_images(arch: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist-mini test images for LeNet (its 1000, repeated to reach `count`); seeded uniform CIFAR-shaped
    images for the ResNets."""
    if DATASET_OF_ARCH[arch] == "mnist-mini":
        data = load_dataset("mnist-mini", "test")
        positions = torch.arange(count) % len(data)
        return data.images[positions], data.labels[positions]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 32, 32, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (count,), generator=generator)


def reference_sample_noise(
    model: torch.nn.Module, image: torch.Tensor, num: int, sigma: float, batch_size: int
) -> np.ndarray:
    """Smooth._sample_noise: class counts over `num` noisy copies of one image, counted on the host."""
    with torch.no_grad():
        counts = np.zeros(NUM_CLASSES, dtype=int)
        remaining = num
        while remaining > 0:
            this_batch_size = min(batch_size, remaining)
            remaining -= this_batch_size
            batch = image.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += np.bincount(predictions.cpu().numpy(), minlength=NUM_CLASSES)
        return counts


def reference_certify(
    model: torch.nn.Module, image: torch.Tensor, n0: int, n: int, alpha: float, sigma: float, batch_size: int
) -> tuple[int, float]:
    """Smooth.certify: (prediction, radius) of one image."""
    model.eval()
    counts_selection = reference_sample_noise(model, image, n0, sigma, batch_size)
    guess = int(counts_selection.argmax())
    counts_estimation = reference_sample_noise(model, image, n, sigma, batch_size)
    pa_lower = lower_confidence_bound(int(counts_estimation[guess]), n, alpha)
    if pa_lower < 0.5:
        return ABSTAIN, 0.0
    return guess, certified_radius(pa_lower, sigma)


class Runner:
    """Both implementations on the same weights, each callable on a set of images; returns their radii."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        model = build_model(args.arch, DATASET_OF_ARCH[args.arch])
        self.reference_model = copy.deepcopy(model).to(self.device).eval()
        started = time.perf_counter()
        self.smx_model = prepare_for_certification(model, self.device, compile_model=args.compile)
        self.images, self.labels = test_images(args.arch, args.images)
        self.smx_batch = forward_batch_size(self.smx_model, self.images.shape[1:], args.batch, self.device,
                                            args.precision)
        self.smx_setup_seconds = time.perf_counter() - started

    def warm_up(self, implementations: tuple[str, ...]) -> None:
        """One image each, untimed: compiles smx's model when asked to, and fills both paths' caches."""
        started = time.perf_counter()
        self.run("smx", count=1)
        self.smx_setup_seconds += time.perf_counter() - started
        if "reference" in implementations:
            self.run("reference", count=1)

    def run(self, implementation: str, count: int | None = None) -> list[float]:
        args, images, labels = self.args, self.images[:count], self.labels[:count]
        if implementation == "reference":
            radii = []
            for image in images:
                radii.append(reference_certify(self.reference_model, image.to(self.device), args.n0, args.n,
                                               args.alpha, args.sigma, args.batch)[1])
            return radii
        certificates = certify_dataset(self.smx_model, images, labels, range(len(images)), args.sigma, args.n0,
                                       args.n, args.alpha, self.smx_batch, NUM_CLASSES, device=self.device,
                                       precision=args.precision)
        return [certificate.radius for certificate in certificates]

    def timed(self, implementation: str) -> tuple[float, list[float]]:
        """(images per second, radii) of one round."""
        synchronize(self.device)
        started = time.perf_counter()
        radii = self.run(implementation)
        synchronize(self.device)
        return len(radii) / (time.perf_counter() - started), radii


def measure_memory_in_fresh_process(implementation: str) -> int:
    # Compiling has a large memory footprint of its own; the passes' memory is the same with or without it.
    left_out = ("--skip-memory", "--compile", "--skip-reference")
    arguments = [argument for argument in sys.argv[1:] if argument not in left_out]
    return memory_in_fresh_process(__file__, [*arguments, "--images", "2", "--memory-of", implementation])


def main() -> None:
    args = parse_arguments()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        runner = Runner(args)
        print_peak_memory(runner.device, lambda: runner.run(args.memory_of))
        return

    implementations = ("smx",) if args.skip_reference else IMPLEMENTATIONS
    runner = Runner(args)
    runner.warm_up(implementations)
    print(f"device {args.device} ({torch.get_num_threads()} CPU threads), arch {args.arch}, "
          f"{args.images} images x {args.rounds} rounds, n0 {args.n0}, n {args.n}, alpha {args.alpha}, "
          f"sigma {args.sigma}")
    if not args.skip_reference:
        print(f"reference: passes of <= {args.batch} rows, NCHW, no_grad, host bincount, one sync per pass")
    layout, device_rewrite = (("channels_last", "pairwise max-pooling") if args.device == "cpu"
                              else ("NCHW", "bias after pooling"))
    print(f"smx: passes of {runner.smx_batch} rows, {layout}, pool before ReLU, {device_rewrite}, in-place ReLU, "
          f"inference_mode, {args.precision}, "
          f"compile {args.compile}, setup and first image {runner.smx_setup_seconds:.1f} s (not timed)")
    rates: dict[str, list[float]] = {name: [] for name in implementations}
    radii: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(args.rounds):
        for name in implementations:
            rate, round_radii = runner.timed(name)
            rates[name].append(rate)
            radii[name].extend(round_radii)
    for name in implementations:
        print(f"{name:9s} {statistics.median(rates[name]):9.2f} images/s (rounds: "
              f"{', '.join(f'{rate:.2f}' for rate in rates[name])}); mean radius {np.mean(radii[name]):.3f}")
    if not args.skip_reference:
        ratios = [smx / reference for smx, reference in zip(rates["smx"], rates["reference"])]
        print(f"smx / reference: {statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    if not args.skip_memory:
        unit = "allocated on the GPU" if args.device.startswith("cuda") else "growth of the resident set"
        for name in implementations:
            print(f"{name:9s} peak memory {measure_memory_in_fresh_process(name) / 2**20:8.1f} MiB ({unit})")

if __name__ == "__main__":
    main()
