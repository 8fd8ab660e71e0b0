"""Certification passes per second for LeNet, one model rewrite at a time, in one process.

Times `count_predictions` (noise, forward pass, counting on the device) on the model as built and after each
rewrite that `prepare_for_certification` applies, so that each rewrite's share is measured against the same
baseline in the same run. Rounds alternate between the variants; the figure is the median round.

    python benchmarks/passes.py --device cuda --rows 20000
    python benchmarks/passes.py --device cpu --threads 1 --rows 256 --draws 40960
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import synchronize  # noqa: E402
from smx.science.models import build_model  # noqa: E402
from smx.science.rewrites import (  # noqa: E402
    bias_after_pooling,
    pairwise_max_pooling,
    pool_before_relu,
    relu_in_place,
)
from smx.science.smoothing import count_predictions  # noqa: E402


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rows", type=int, default=20000, help="rows per forward pass")
    parser.add_argument("--draws", type=int, default=400000, help="noisy draws per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


def variants(device: torch.device) -> dict[str, torch.nn.Module]:
    """The model as built, then with each rewrite added in the order prepare_for_certification applies them; the
    last two each add one device's rewrite to the third."""
    torch.manual_seed(0)
    built = build_model("lenet", "mnist-mini").to(device).eval()
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    laid_out = copy.deepcopy(built).to(memory_format=layout)
    pooled_first = copy.deepcopy(laid_out)
    pool_before_relu(pooled_first)
    relu_in_place(pooled_first)
    pairwise = copy.deepcopy(pooled_first)
    pairwise_max_pooling(pairwise)
    bias_last = copy.deepcopy(laid_out)
    pool_before_relu(bias_last)
    bias_after_pooling(bias_last)
    relu_in_place(bias_last)
    return {
        "as built": built,
        f"+ {'channels_last' if device.type == 'cpu' else 'NCHW'}": laid_out,
        "+ pooling before ReLU, ReLU in place": pooled_first,
        "+ pairwise max-pooling (CPU)": pairwise,
        "+ bias after pooling (CUDA)": bias_last,
    }


def main() -> None:
    args = parse_arguments()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = variants(device)
    image = torch.rand(1, 1, 28, 28, device=device)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), LeNet, {args.rows} rows per pass, "
          f"{args.draws} draws x {args.rounds} rounds")
    rates: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():  # count_predictions runs fp32 forwards, TF32 off on CUDA
        for model in models.values():
            count_predictions(model, image, (args.rows,), 0.5, args.rows, 10)  # warm-up and cuDNN autotuning
        for _ in range(args.rounds):
            for name, model in models.items():
                synchronize(device)
                started = time.perf_counter()
                count_predictions(model, image, (args.draws,), 0.5, args.rows, 10)
                synchronize(device)
                rates[name].append(args.draws / (time.perf_counter() - started))
    baseline = statistics.median(rates["as built"])
    for name, measured in rates.items():
        median = statistics.median(measured)
        print(f"{name:40s} {median:12,.0f} draws/s  {median / baseline:5.2f}x  "
              f"(rounds: {', '.join(f'{rate:,.0f}' for rate in measured)})")


if __name__ == "__main__":
    main()
