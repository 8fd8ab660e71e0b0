"""The one training loop for every method, with a durable checkpoint per epoch and exact resume.

Each loader batch of B images is split into m = params.optimizer_steps_per_batch() chunks of B // m images
with one optimizer step per chunk; the B mod m leftover images are dropped, as in the reference code.

Learning rate: SGD with a step decay after every lr_step epochs (lr_schedule). By default each decay lands one
epoch late (epochs 0..lr_step at lr), as in the jh-jeong repositories (consistency, SmoothMix, and their ports
of every baseline) under current PyTorch: they step the scheduler with an epoch argument PyTorch no longer
honours. Their recipes are the datasets' defaults, so their schedule is the faithful default.
`lr_decay = "on_time"` gives Cohen's and Salman's schedule, epoch e at lr * gamma ** (e // lr_step).

Speed (docs/performance.md): tensor datasets live on the device and batches are index gathers; the loop never
waits for the device within an epoch. The model is rewritten for speed first (prepare_for_training).
`amp` opts in to bf16 autocast of the loss's forward passes: faster on GPUs (and on CPUs with AMX), but the
results are not those of fp32 training, so it is recorded in every checkpoint and off by default.

Reproducibility: the loop seeds torch and a separate shuffle generator from `settings.seed`, and every
checkpoint stores the model, optimizer, scheduler and all RNG states, so a run resumed from any checkpoint
ends with the same weights as an uninterrupted one (bit for bit on CPU; on GPU up to cuDNN's own
non-determinism). The caller seeds torch before building the model.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from smx.errors import UserError
from smx.paths import written_whole
from smx.science.catalog import DATASETS
from smx.science.data import ImageTensors, train_augmentation
from smx.science.data_files import DataError
from smx.science.methods import load_method
from smx.science.methods.base import LossFunction, StepContext, StepOutput
from smx.science.methods.params import METHOD_PARAMS, MethodParams
from smx.science.rewrites import fast_image_gradients, pool_before_relu
from smx.science.step_graphs import CudaGraphRecorder, GraphedSteps

CHECKPOINT_PREFIX = "epoch-"
CHECKPOINT_SUFFIX = ".pt"
# An epoch's metrics, beside its checkpoint (epoch-0003.metrics.json) and not in it: the checkpoint holds the
# run's state alone, so two runs of the same settings on one machine write the same bytes (no wall-clock seconds).
METRICS_SUFFIX = ".metrics.json"
TEMPORARY_SUFFIX = ".tmp"
CHECKPOINTS_KEPT = 2
PROGRESS_INTERVAL_SECONDS = 0.25
# Settings that say where a run executes, not what it computes; a run may resume under different values.
RUNTIME_SETTINGS = ("device", "num_workers", "cuda_graphs")
# Checkpoints written before a setting was recorded in them ran with these values.
UNRECORDED_SETTINGS = {"amp": False, "lr_decay": "on_time"}


@dataclass
class TrainSettings:
    method: str
    params: MethodParams
    sigma: float
    epochs: int
    batch_size: int
    lr: float
    lr_step: int
    lr_gamma: float
    momentum: float
    weight_decay: float
    seed: int
    dataset: str  # a catalog name: gives the number of classes and the on-device augmentation
    device: str = "cpu"
    num_workers: int = 4  # DataLoader processes, used only for datasets that are not ImageTensors
    amp: bool = False  # bf16 autocast of the forward passes; changes the results, so it is off by default
    lr_decay: str = "one_epoch_late"  # or "on_time" (see lr_schedule)
    # Replay each epoch's steps from a CUDA graph (step_graphs) on GPUs: the same steps, fewer launches. Opt-in
    # until measured on a GPU; a runtime setting, as the device is.
    cuda_graphs: bool = False

    def record(self) -> dict[str, Any]:
        """The settings as plain values, as stored in every checkpoint."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values["params"] = self.params.model_dump()
        return values


@dataclass
class EpochMetrics:
    epoch: int  # 1-based: the number of epochs finished, as in the checkpoint's name
    loss: float  # mean training loss over the epoch's optimizer steps
    noisy_accuracy: float  # accuracy of the base classifier on the noisy training inputs of its loss
    lr: float
    seconds: float
    extras: dict[str, float] = field(default_factory=dict)  # the method's diagnostics, averaged over steps


CheckpointCallback = Callable[[Path, int], None]
ResumeCallback = Callable[[Path, int, EpochMetrics | None], None]
RemovedCallback = Callable[[Path], None]
IntactCheck = Callable[[Path], bool]  # False for a checkpoint whose bytes are not those written
SET_ASIDE_SUFFIX = ".corrupt"
EpochCallback = Callable[[EpochMetrics], None]
ProgressCallback = Callable[[float, str], None]


def checkpoint_path(checkpoint_dir: Path, epoch: int) -> Path:
    return checkpoint_dir / f"{CHECKPOINT_PREFIX}{epoch:04d}{CHECKPOINT_SUFFIX}"


def metrics_path(checkpoint: Path) -> Path:
    """Where the metrics of a checkpoint's epoch are kept beside it."""
    return checkpoint.with_name(checkpoint.name.removesuffix(CHECKPOINT_SUFFIX) + METRICS_SUFFIX)


def save_metrics(metrics: EpochMetrics, path: Path) -> None:
    with written_whole(path) as partial:
        partial.write_text(json.dumps(asdict(metrics)))


def load_metrics(checkpoint: Path, state: dict[str, Any]) -> EpochMetrics | None:
    """The metrics of a restored checkpoint's epoch: from beside it, or from inside a checkpoint written before
    they moved out; None when neither has them (a file lost or damaged: the run goes on without them)."""
    try:
        return EpochMetrics(**json.loads(metrics_path(checkpoint).read_text()))
    except (OSError, ValueError, TypeError):
        return EpochMetrics(**state["metrics"]) if "metrics" in state else None


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint file in the folder, oldest first."""
    found = []
    for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"):
        number = path.name[len(CHECKPOINT_PREFIX) : -len(CHECKPOINT_SUFFIX)]
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically and durably: a temporary file in the same folder, fsync, rename, fsync the folder."""
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        with temporary.open("wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        # A half-written file would hold on to the space a full disk needs back.
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    if os.name == "posix":
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents on the CPU; raises ValueError when the file is unreadable or incomplete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, KeyError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(f"unreadable checkpoint {path}: {error}") from error
    required = ("epoch", "model", "optimizer", "scheduler", "rng", "settings")
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise ValueError(f"checkpoint {path} lacks some of {', '.join(required)}")
    return state


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a training checkpoint's model weights into `model` (weights_only loading: no code runs)."""
    try:
        state = load_checkpoint(checkpoint)
    except ValueError as error:
        raise UserError(f"{error}; retrain, or point to another checkpoint") from error
    model.load_state_dict(state["model"])


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"train device {name!r} is not a device; use 'cpu', 'cuda' or 'cuda:<index>'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train device {name!r} was asked for, but torch sees no CUDA GPU; use 'cpu'")
    return device


def validate(settings: TrainSettings) -> None:
    if settings.method not in METHOD_PARAMS:
        raise UserError(f"unknown training method {settings.method!r}; known: {', '.join(sorted(METHOD_PARAMS))}")
    if not isinstance(settings.params, METHOD_PARAMS[settings.method]):
        raise UserError(f"train.params are {type(settings.params).__name__}, not the parameters of {settings.method}")
    if settings.dataset not in DATASETS:
        raise UserError(f"unknown dataset {settings.dataset!r}; known: {', '.join(sorted(DATASETS))}")
    if settings.epochs < 1 or settings.lr_step < 1:
        raise UserError("train.epochs and train.lr_step must be at least 1")
    if settings.lr_decay not in ("on_time", "one_epoch_late"):
        raise UserError(f"train.lr_decay is {settings.lr_decay!r}; use 'on_time' or 'one_epoch_late'")
    chunks = settings.params.optimizer_steps_per_batch()
    if settings.batch_size < chunks:
        raise UserError(
            f"train.batch_size = {settings.batch_size} is smaller than the {chunks} chunks each batch is split into; "
            f"raise it or lower noise_samples"
        )


def rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, torch.Tensor], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def batches(
    data: ImageTensors | torch.utils.data.Dataset,
    settings: TrainSettings,
    shuffle: torch.Generator,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images, labels) batches on `device` in a fresh shuffled order; the last may be partial."""
    if isinstance(data, ImageTensors):
        augment = train_augmentation(settings.dataset)
        order = torch.randperm(len(data), generator=shuffle).to(device)
        for indices in order.split(settings.batch_size):
            images = data.images[indices]
            yield (augment(images) if augment else images), data.labels[indices]
        return
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=shuffle,
        num_workers=settings.num_workers,
        pin_memory=device.type == "cuda",
    )
    try:
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    except DataError as error:
        # Raised in a worker process (a damaged image file), it comes back with torch's account of the worker's
        # traceback as its message, which ends in "...DataError: <message>": keep the message alone.
        raise DataError(str(error).rstrip().rpartition("DataError: ")[2]) from None


def resume(
    checkpoint_dir: Path,
    settings: TrainSettings,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shuffle: torch.Generator,
    device: torch.device,
    on_checkpoint_removed: RemovedCallback | None,
    is_intact: IntactCheck | None = None,
) -> tuple[int, Path | None, EpochMetrics | None]:
    """Restore the newest usable checkpoint; returns (epochs it finished, its path, its last epoch's metrics), or
    (0, None, None) without one (see load_metrics). Unreadable checkpoints on the way are deleted: training is about
    to write them again anyway. Those that `is_intact` refuses, or whose contents do not fit the model, are set
    aside (renamed with SET_ASIDE_SUFFIX) for inspection."""
    untouched: list[dict[str, Any]] = []  # the state before the first load, taken only if one is tried
    for _, path in reversed(list_checkpoints(checkpoint_dir)):
        if is_intact is not None and not is_intact(path):
            _set_aside(path, on_checkpoint_removed)
            continue
        try:
            state = load_checkpoint(path)
        except ValueError:
            path.unlink()
            if on_checkpoint_removed:
                on_checkpoint_removed(path)
            continue
        check_same_run(state["settings"], settings, path)
        untouched = untouched or [copy.deepcopy(part.state_dict()) for part in (model, optimizer, scheduler)]
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError, TypeError):
            # e.g. another architecture's weights: a partial load leaves nothing behind for an earlier checkpoint.
            for part, state_dict in zip((model, optimizer, scheduler), untouched):
                part.load_state_dict(copy.deepcopy(state_dict))
            _set_aside(path, on_checkpoint_removed)
            continue
        restore_rng_state(state["rng"], shuffle, device)
        return state["epoch"], path, load_metrics(path, state)
    return 0, None, None


def _set_aside(path: Path, on_checkpoint_removed: RemovedCallback | None) -> None:
    path.rename(path.with_name(path.name + SET_ASIDE_SUFFIX))
    if on_checkpoint_removed:
        on_checkpoint_removed(path)


def train(
    model: torch.nn.Module,
    data: ImageTensors | torch.utils.data.Dataset,
    settings: TrainSettings,
    checkpoint_dir: Path,
    *,
    on_checkpoint: CheckpointCallback | None = None,
    on_checkpoint_removed: RemovedCallback | None = None,
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
    on_resume: ResumeCallback | None = None,
    is_intact: IntactCheck | None = None,
) -> Path:
    """Train `model` in place, resuming from the newest readable checkpoint in `checkpoint_dir`.

    After each epoch: its metrics are written beside the checkpoint's path (METRICS_SUFFIX), the checkpoint is
    written and made durable, then on_checkpoint(path, epoch), then on_checkpoint_removed(path) for each checkpoint
    pruned (all but the newest two, and unreadable ones found when resuming), then on_epoch(metrics).
    on_progress(fraction of the whole run, text) is called at most every PROGRESS_INTERVAL_SECONDS.
    on_resume(path, epoch, metrics of that epoch) is called once when a checkpoint was restored: a process killed
    after a checkpoint's write but before its callbacks ran would otherwise lose what they record. is_intact(path)
    is asked before a checkpoint is resumed from (see `resume`).
    Returns the final checkpoint.
    """
    validate(settings)
    device = resolve_device(settings.device)
    method = load_method(settings.method)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for leftover in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}{TEMPORARY_SUFFIX}"):
        leftover.unlink()  # a write that was interrupted before its rename

    prepare_for_training(model, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = lr_schedule(optimizer, settings)
    torch.manual_seed(settings.seed)
    shuffle = torch.Generator().manual_seed(settings.seed)

    start_epoch, latest, restored_metrics = resume(
        checkpoint_dir, settings, model, optimizer, scheduler, shuffle, device, on_checkpoint_removed, is_intact
    )
    if latest is not None and on_resume:
        on_resume(latest, start_epoch, restored_metrics)
    if latest is not None and start_epoch >= settings.epochs:
        return latest

    if isinstance(data, ImageTensors):
        data = data.to(device)
    num_classes = DATASETS[settings.dataset].num_classes
    report = throttled(on_progress)
    for epoch in range(start_epoch, settings.epochs):
        context = StepContext(params=settings.params, epoch=epoch, epochs=settings.epochs, num_classes=num_classes)
        metrics = train_epoch(model, method.loss, optimizer, data, settings, context, shuffle, device, report)
        scheduler.step()
        latest = checkpoint_path(checkpoint_dir, epoch + 1)
        # A folder deleted while the job ran (to free space, say) is made again rather than fail the training.
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # First: a process killed after the checkpoint's write finds them for on_resume.
        save_metrics(metrics, metrics_path(latest))
        save_checkpoint(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(shuffle, device),
                "settings": settings.record(),
            },
            latest,
        )
        if on_checkpoint:
            on_checkpoint(latest, epoch + 1)
        for _, old in list_checkpoints(checkpoint_dir)[:-CHECKPOINTS_KEPT]:
            old.unlink()
            metrics_path(old).unlink(missing_ok=True)
            if on_checkpoint_removed:
                on_checkpoint_removed(old)
        if on_epoch:
            on_epoch(metrics)
    return latest


def prepare_for_training(model: torch.nn.Module, device: torch.device) -> None:
    """Move `model` to `device` and rewrite it in place for speed, without changing what it computes.

    - channels_last weights: oneDNN (CPU) and cuDNN (CUDA) run convolutions without reordering activations;
      a SmoothMix step on one CPU core ran 1.5x faster for LeNet and 1.2x for CIFAR ResNet-20. The same sums
      in another order: results differ from NCHW training at fp32 rounding.
    - pooling before ReLU (rewrites.pool_before_relu): the same values and gradients, bit for bit.
    - a fast image gradient for single-channel first layers on CPUs (rewrites.fast_image_gradients), which
      the attacks of SmoothAdv and SmoothMix need at every step.
    - on CUDA, cuDNN autotuning: every full batch has the same shape.
    """
    model.to(device, memory_format=torch.channels_last)
    pool_before_relu(model)
    fast_image_gradients(model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def lr_schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped after every epoch. With lr_decay = "one_epoch_late" (the default) epoch e (0-based) trains at
    lr * gamma ** (max(e - 1, 0) // lr_step), as the jh-jeong repositories do under PyTorch >= 1.5; with "on_time"
    at lr * gamma ** (e // lr_step), Cohen's and Salman's StepLR."""
    if settings.lr_decay == "one_epoch_late":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: settings.lr_gamma ** (max(epoch - 1, 0) // settings.lr_step)
        )
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)


def check_same_run(stored: dict[str, Any], settings: TrainSettings, path: Path) -> None:
    current = settings.record()
    differing = sorted(
        name
        for name in set(stored) | set(current)
        if name not in RUNTIME_SETTINGS and stored.get(name, UNRECORDED_SETTINGS.get(name)) != current.get(name)
    )
    if differing:
        raise UserError(
            f"checkpoint {path} was written by a run with different {', '.join(differing)}; "
            f"use an empty checkpoint folder for a new configuration"
        )


def throttled(on_progress: ProgressCallback | None) -> ProgressCallback:
    """on_progress, but skipping calls that come within PROGRESS_INTERVAL_SECONDS of the last one passed on."""
    last_call = -math.inf

    def report(fraction: float, text: str) -> None:
        nonlocal last_call
        now = time.monotonic()
        if on_progress and now - last_call >= PROGRESS_INTERVAL_SECONDS:
            last_call = now
            on_progress(fraction, text)

    return report


class EpochTotals:
    """Sums over an epoch's optimizer steps, kept on the device and updated in place, so that no step waits for
    the GPU and a CUDA graph's replays add to them; they are read once at the end."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.noisy_count = torch.zeros((), device=device, dtype=torch.long)
        self.steps = torch.zeros((), device=device, dtype=torch.long)
        self.extras: dict[str, torch.Tensor] = {}

    def add(self, output: StepOutput) -> None:
        self.loss += output.loss.detach()
        self.correct += (output.noisy_logits.detach().argmax(dim=1) == output.noisy_targets).sum()
        self.noisy_count += len(output.noisy_targets)
        self.steps += 1
        for name, value in output.extras.items():
            value = value.detach() if torch.is_tensor(value) else value
            # Created by the first step, which is never a graph capture: a captured creation would reset the sum
            # at every replay.
            if name not in self.extras:
                self.extras[name] = torch.zeros((), device=self.loss.device, dtype=self.loss.dtype)
            self.extras[name] += value


def train_epoch(
    model: torch.nn.Module,
    loss_function: LossFunction,
    optimizer: torch.optim.Optimizer,
    data: ImageTensors | torch.utils.data.Dataset,
    settings: TrainSettings,
    context: StepContext,
    shuffle: torch.Generator,
    device: torch.device,
    report: ProgressCallback,
) -> EpochMetrics:
    started = time.perf_counter()
    model.train()
    chunks = settings.params.optimizer_steps_per_batch()
    lr = optimizer.param_groups[0]["lr"]
    totals = EpochTotals(device)
    graphed = uses_cuda_graphs(settings, data, device)

    def optimizer_step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        # PyTorch's notes on CUDA graphs ask for autocast without its cache of cast weights inside a capture.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.amp, cache_enabled=not graphed):
            output = loss_function(model, inputs, targets, settings.sigma, context)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        totals.add(output)

    run_step = GraphedSteps(optimizer_step, CudaGraphRecorder(device)) if graphed else optimizer_step
    num_batches = math.ceil(len(data) / settings.batch_size)
    for batch_index, (images, labels) in enumerate(batches(data, settings, shuffle, device)):
        # The len(labels) % chunks leftover images are dropped, as in the reference; a tiny last batch gives no step.
        chunk_size = len(labels) // chunks
        for chunk in range(chunks if chunk_size else 0):
            run_step(images[chunk * chunk_size : (chunk + 1) * chunk_size],
                     labels[chunk * chunk_size : (chunk + 1) * chunk_size])
        report(
            (context.epoch + (batch_index + 1) / num_batches) / context.epochs,
            f"epoch {context.epoch + 1}/{context.epochs} batch {batch_index + 1}/{num_batches}",
        )
    if graphed:
        # Gradients a replay wrote live in the graph's memory, which they would keep from being freed.
        optimizer.zero_grad(set_to_none=True)
    steps = int(totals.steps)
    if steps == 0:
        raise UserError("the training data yielded no optimizer step; it has fewer images than noise_samples")
    loss = float(totals.loss) / steps
    if not math.isfinite(loss):
        raise UserError(
            f"training diverged: the mean loss of epoch {context.epoch + 1} is {loss}; lower train.lr, check that "
            "train.sigma suits inputs in [0, 1], or check the data"
        )
    return EpochMetrics(
        epoch=context.epoch + 1,
        loss=loss,
        noisy_accuracy=int(totals.correct) / int(totals.noisy_count),
        lr=lr,
        seconds=time.perf_counter() - started,
        extras={name: float(total) / steps for name, total in totals.extras.items()},
    )


def uses_cuda_graphs(
    settings: TrainSettings, data: ImageTensors | torch.utils.data.Dataset, device: torch.device
) -> bool:
    """Whether an epoch replays its steps from a CUDA graph (step_graphs): when asked for, on a GPU, with the data
    on the device. A DataLoader's batches come from worker processes and a pinning thread, which a capture must
    not overlap, and datasets that need a loader have models large enough to keep a GPU busy without graphs."""
    return settings.cuda_graphs and device.type == "cuda" and isinstance(data, ImageTensors)
