"""Train job: build the model and data a config names, train with its method, record every checkpoint.

SMX_CUDA_GRAPHS=1 (or true, yes, on) in a worker's environment opts in to replaying each optimizer step from a CUDA
graph on GPUs (smx/science/step_graphs.py): the same steps with fewer kernel launches, not yet the default.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sqlalchemy import delete

from smx.db.models import Job, TrainMetric
from smx.db.store import Store
from smx.science.data import load_dataset
from smx.science.methods.params import METHOD_PARAMS
from smx.science.models import build_model
from smx.science.training import EpochMetrics, TrainSettings, train, uses_cuda_graphs
from smx.spec import config_value
from smx.tasks import checkpoints
from smx.tasks.flags import environment_flag
from smx.tasks.progress import ProgressReporter


def settings_from_config(config: dict, device: str) -> TrainSettings:
    train_config = config["train"]
    return TrainSettings(
        method=train_config["method"],
        params=METHOD_PARAMS[train_config["method"]](**train_config["params"]),
        sigma=train_config["sigma"],
        epochs=train_config["epochs"],
        batch_size=train_config["batch_size"],
        lr=train_config["lr"],
        lr_step=train_config["lr_step"],
        lr_gamma=train_config["lr_gamma"],
        momentum=train_config["momentum"],
        weight_decay=train_config["weight_decay"],
        seed=config["seed"],
        dataset=config["data"]["dataset"],
        device=device,
        amp=config_value("train.amp", config),
        lr_decay=config_value("train.lr_decay", config),
        cuda_graphs=environment_flag("SMX_CUDA_GRAPHS"),
    )


def run(store: Store, job: Job, device: str, progress: ProgressReporter) -> None:
    config = job.config
    dataset = config["data"]["dataset"]
    data = load_dataset(dataset, "train", root=job.runtime.get("data_root"),
                        download=job.runtime.get("download", False))
    # The initial weights are part of the run: seed before building the model, not only before training.
    torch.manual_seed(config["seed"])
    model = build_model(config["model"]["arch"], dataset)

    epochs = config["train"]["epochs"]

    def record_metrics(metrics: EpochMetrics) -> None:
        with store.session() as session:
            session.execute(delete(TrainMetric)
                            .where(TrainMetric.job_key == job.key, TrainMetric.epoch == metrics.epoch))
            session.add(TrainMetric(job_key=job.key, epoch=metrics.epoch, loss=metrics.loss,
                                    noisy_accuracy=metrics.noisy_accuracy, lr=metrics.lr, seconds=metrics.seconds,
                                    extras=metrics.extras))

    def on_epoch(metrics: EpochMetrics) -> None:
        print(f"epoch {metrics.epoch}/{epochs}: loss {metrics.loss:.4f}, noisy accuracy {metrics.noisy_accuracy:.4f}, "
              f"lr {metrics.lr:g}, {metrics.seconds:.1f} s", flush=True)
        record_metrics(metrics)

    def on_checkpoint(path: Path, epoch: int) -> None:
        checkpoints.record(store, job.key, path, epoch)

    def on_resume(path: Path, epoch: int, metrics: EpochMetrics | None) -> None:
        print(f"resumed from {path} after epoch {epoch}/{epochs}", flush=True)
        progress.resumed(epoch / epochs, f"resumed after epoch {epoch}/{epochs}")
        # Recorded again in case the last run died between writing this checkpoint and recording it.
        on_checkpoint(path, epoch)
        if metrics is not None:
            record_metrics(metrics)

    settings = settings_from_config(config, device)
    if settings.cuda_graphs:
        print("SMX_CUDA_GRAPHS: each epoch's steps replay from a CUDA graph"
              if uses_cuda_graphs(settings, data, torch.device(device))
              else "SMX_CUDA_GRAPHS left unused: CUDA graphs need a GPU and a dataset held in memory", flush=True)
    final = train(model, data, settings, store.checkpoint_dir(job.key),
                  on_checkpoint=on_checkpoint,
                  on_checkpoint_removed=lambda path: checkpoints.forget(store, job.key, path),
                  on_epoch=on_epoch, on_progress=progress, on_resume=on_resume,
                  is_intact=lambda path: checkpoints.is_intact(store, job.key, path))
    checkpoints.mark_final(store, job.key, final, epoch=config["train"]["epochs"])
