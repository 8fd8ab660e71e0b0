"""SmoothMix training speed: smx's epoch against the published training loop's structure, in one process.

The reference is the structure of jh-jeong's train_smoothmix.py: a torch DataLoader with worker processes over
host tensors, each batch cut into m chunks with one optimizer step per chunk, every chunk copied to the device,
the SmoothMix_PGD attack with a separate forward pass per noise sample, the clean and mixup branches on
concatenated noisy copies, and `.item()` reads of the loss and accuracy after every step (the AverageMeters).
smx runs its own `train_epoch` on a tensor dataset held on the device. Both train LeNet on mnist-mini with the
same hyperparameters from the same initial weights; rounds alternate between them, and the ratio is the median
of per-round ratios. Peak memory is measured as in benchmarks/certify.py, in a fresh process per implementation
(on a CPU the DataLoader workers' own memory is not included).

    python benchmarks/train.py --device cpu --threads 1
    python benchmarks/train.py --device cuda --epochs 3
    python benchmarks/train.py --device cuda --epochs 3 --cuda-graphs   # adds smx with CUDA graphs to the rounds
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import memory_in_fresh_process, print_peak_memory, synchronize  # noqa: E402
from smx.science.data import load_dataset  # noqa: E402
from smx.science.methods import smoothmix  # noqa: E402
from smx.science.methods.base import StepContext  # noqa: E402
from smx.science.methods.params import SmoothMixParams  # noqa: E402
from smx.science.models import build_model  # noqa: E402
from smx.science.step_graphs import WARMUP_STEPS  # noqa: E402
from smx.science.training import TrainSettings, prepare_for_training, throttled, train_epoch  # noqa: E402

IMPLEMENTATIONS = ("reference", "smx", "smx-graphs")
NUM_CLASSES = 10
# The reference's default of 4 workers exceeds the cores of small machines; torch says so on every epoch.
warnings.filterwarnings("ignore", message="This DataLoader will create")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds of each implementation")
    parser.add_argument("--noise-samples", type=int, default=2, help="m")
    parser.add_argument("--steps", type=int, default=4, help="T, the attack's steps")
    parser.add_argument("--eta", type=float, default=5.0)
    parser.add_argument("--alpha", type=float, default=1.0, help="the attack's step size")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=4000, help="training images (mnist-mini has 4000)")
    parser.add_argument("--workers", type=int, default=4, help="the reference's DataLoader workers (its default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", action="store_true", help="smx trains under bf16 autocast")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time smx replaying its steps from CUDA graphs (smx-graphs; GPU only)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-of", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.cuda_graphs and not args.device.startswith("cuda"):
        parser.error("--cuda-graphs needs --device cuda: CUDA graphs replay GPU kernels")
    return args


def reference_attack(
    model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, noises: list[torch.Tensor],
    steps: int, step_size: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothMix_PGD.attack with mix_step 0 and no norm bound: one forward pass per noise sample and step."""
    adversary = inputs.detach()
    start = inputs.detach()
    for _ in range(steps):
        adversary.requires_grad_()
        softmax = [F.softmax(model(adversary + noise), dim=1) for noise in noises]
        average_softmax = sum(softmax) / len(noises)
        loss = F.nll_loss(torch.log(average_softmax.clamp(min=1e-20)), labels, reduction="sum")
        gradient = torch.autograd.grad(loss, [adversary])[0]
        gradient_norm = gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        adversary = (adversary + step_size * gradient / (gradient_norm + 1e-8)).clamp(0, 1).detach()
    return start, adversary


def requires_grad_(model: torch.nn.Module, requires_grad: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(requires_grad)


def reference_epoch(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
    args: argparse.Namespace, device: torch.device, epoch: int,
) -> float:
    """One epoch of train_smoothmix.py's train(); returns the mean loss as its AverageMeter would."""
    model.train()
    requires_grad_(model, True)
    warmup_weight = min(1.0, (epoch + 1) / 10)
    loss_sum, count = 0.0, 0
    for images, labels in loader:
        chunk_size = len(labels) // args.noise_samples
        for chunk in range(args.noise_samples):
            inputs = images[chunk * chunk_size:(chunk + 1) * chunk_size].to(device)
            targets = labels[chunk * chunk_size:(chunk + 1) * chunk_size].to(device)
            noises = [torch.randn_like(inputs) * args.sigma for _ in range(args.noise_samples)]
            requires_grad_(model, False)
            model.eval()
            inputs, inputs_adv = reference_attack(model, inputs, targets, noises, args.steps, args.alpha)
            model.train()
            requires_grad_(model, True)

            logits_clean = model(torch.cat([inputs + noise for noise in noises], dim=0))
            targets_clean = targets.repeat(args.noise_samples)
            chunks_softmax = [F.softmax(chunk_logits, dim=1) for chunk_logits in logits_clean.chunk(args.noise_samples)]
            clean_softmax = sum(chunks_softmax) / args.noise_samples
            loss_xent = F.cross_entropy(logits_clean, targets_clean, reduction="none")

            mix_ratio = (torch.rand(len(targets), device=device) * 0.5).view(-1, 1, 1, 1)
            inputs_mix = (1 - mix_ratio) * inputs + mix_ratio * inputs_adv
            targets_mix = (1 - mix_ratio.view(-1, 1)) * clean_softmax + mix_ratio.view(-1, 1) / NUM_CLASSES
            logits_mix = F.log_softmax(model(torch.cat([inputs_mix + noise for noise in noises], dim=0)), dim=1)
            correct = (clean_softmax.argmax(dim=1) == targets).float().repeat(args.noise_samples)
            loss_mixup = F.kl_div(logits_mix, targets_mix.repeat(args.noise_samples, 1), reduction="none").sum(1)
            loss = loss_xent.mean() + args.eta * warmup_weight * (correct * loss_mixup).mean()

            accuracy = (logits_clean.argmax(dim=1) == targets_clean).float().mean() * 100
            loss_sum += loss.item() * len(targets)
            count += len(targets)
            accuracy.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return loss_sum / count


class Runner:
    """Each implementation trains a copy of the same initial LeNet for args.epochs epochs per call."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        data = load_dataset("mnist-mini", "train").subset(range(args.images))
        self.host_data = torch.utils.data.TensorDataset(data.images, data.labels)
        self.device_data = data.to(self.device)
        torch.manual_seed(0)
        self.initial_model = build_model("lenet", "mnist-mini")
        self.params = SmoothMixParams(eta=args.eta, alpha=args.alpha, steps=args.steps,
                                      noise_samples=args.noise_samples, mix_step=0, warmup=10)
        self.settings = TrainSettings(method="smoothmix", params=self.params, sigma=args.sigma, epochs=args.epochs,
                                      batch_size=args.batch, lr=0.01, lr_step=30, lr_gamma=0.1, momentum=0.9,
                                      weight_decay=1e-4, seed=0, dataset="mnist-mini", device=args.device,
                                      amp=args.amp)

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def run(self, implementation: str) -> float:
        """Mean loss of the last epoch."""
        model = copy.deepcopy(self.initial_model).to(self.device)
        optimizer = self.optimizer(model)
        if implementation == "reference":
            # Unpinned host memory, as the reference's loaders for every dataset but ImageNet.
            loader = torch.utils.data.DataLoader(self.host_data, batch_size=self.args.batch, shuffle=True,
                                                 num_workers=self.args.workers)
            for epoch in range(self.args.epochs):
                loss = reference_epoch(model, loader, optimizer, self.args, self.device, epoch)
            return loss
        prepare_for_training(model, self.device)
        shuffle = torch.Generator().manual_seed(0)
        settings = dataclasses.replace(self.settings, cuda_graphs=implementation == "smx-graphs")
        for epoch in range(self.args.epochs):
            context = StepContext(params=self.params, epoch=epoch, epochs=self.args.epochs, num_classes=NUM_CLASSES)
            metrics = train_epoch(model, smoothmix.loss, optimizer, self.device_data, settings, context,
                                  shuffle, self.device, throttled(None))
        return metrics.loss

    def timed(self, implementation: str) -> tuple[float, float]:
        """(seconds per epoch, final loss) of one round."""
        synchronize(self.device)
        started = time.perf_counter()
        loss = self.run(implementation)
        synchronize(self.device)
        return (time.perf_counter() - started) / self.args.epochs, loss


def measure_memory_in_fresh_process(implementation: str) -> int:
    arguments = [argument for argument in sys.argv[1:] if argument != "--skip-memory"]
    return memory_in_fresh_process(__file__, [*arguments, "--epochs", "1", "--memory-of", implementation])


def main() -> None:
    args = parse_arguments()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        runner = Runner(args)
        print_peak_memory(runner.device, lambda: runner.run(args.memory_of))
        return

    runner = Runner(args)
    print(f"device {args.device} ({torch.get_num_threads()} CPU threads), LeNet on {args.images} mnist-mini images, "
          f"batch {args.batch}, m {args.noise_samples}, T {args.steps}, eta {args.eta}, alpha {args.alpha}, "
          f"sigma {args.sigma}; {args.epochs} epoch(s) x {args.rounds} rounds")
    print(f"reference: DataLoader with {args.workers} workers, host batches copied per step, "
          f"{args.noise_samples} forwards per attack step, .item() every step")
    print(f"smx: data on the device, index-gather batches, one forward per attack step, prepare_for_training "
          f"(channels_last, pooling before ReLU, fast single-channel image gradients), amp {args.amp}")
    if args.cuda_graphs:
        print(f"smx-graphs: smx with each epoch's steps replayed from a CUDA graph after {WARMUP_STEPS} eager ones")
    implementations = IMPLEMENTATIONS if args.cuda_graphs else IMPLEMENTATIONS[:2]
    seconds: dict[str, list[float]] = {name: [] for name in implementations}
    losses: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(args.rounds):
        for name in implementations:
            round_seconds, loss = runner.timed(name)
            seconds[name].append(round_seconds)
            losses[name].append(loss)
    for name in implementations:
        print(f"{name:10s} {statistics.median(seconds[name]):8.2f} s/epoch (rounds: "
              f"{', '.join(f'{value:.2f}' for value in seconds[name])}); last-epoch loss "
              f"{statistics.mean(losses[name]):.4f}")
    for slower, faster in (("reference", "smx"), ("reference", "smx-graphs"), ("smx", "smx-graphs")):
        if faster in implementations:
            ratios = [a / b for a, b in zip(seconds[slower], seconds[faster])]
            print(f"{slower} / {faster}: {statistics.median(ratios):.2f}x "
                  f"(per round: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    if not args.skip_memory:
        unit = "allocated on the GPU" if args.device.startswith("cuda") else "growth of the resident set"
        for name in implementations:
            print(f"{name:10s} peak memory {measure_memory_in_fresh_process(name) / 2**20:8.1f} MiB ({unit})")


if __name__ == "__main__":
    main()
