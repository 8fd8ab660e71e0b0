"""Analyze job: the SmoothMix paper's section 3.1 analyses (Table 1's confidences under attack, Figure 3's
equal-confidence mixing ratios) of one trained model, on the first [analyze].max_samples test images.

Each analysis reseeds torch with the training seed, so its numbers do not depend on which other analyses the
spec asks for, and replaces its rows in one transaction: a rerun never leaves a half-written analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy import delete, select

from smx.db.models import AnalysisResult, Job, JobParent
from smx.db.store import Store
from smx.science.analysis import ProgressCallback, confidence_under_attack, equal_confidence_mixing_ratios
from smx.science.catalog import DATASETS
from smx.science.data import images_and_labels, load_dataset, strided_indices
from smx.science.rewrites import fast_image_gradients
from smx.science.seeds import derived_seed
from smx.science.smoothing import prepare_for_certification
from smx.tasks import checkpoints
from smx.tasks.progress import ProgressReporter

# Test images read at once: bounds memory for datasets read from disk (ImageNet).
IMAGES_PER_GROUP = 500


def run(store: Store, job: Job, device: str, progress: ProgressReporter) -> None:
    settings, dataset = job.config["analyze"], job.config["data"]["dataset"]
    with store.session() as session:
        train_key = session.scalar(select(JobParent.parent_key).where(JobParent.child_key == job.key))
        train_config = session.get(Job, train_key).config
    model = checkpoints.trained_model(store, job.key, train_key, train_config["model"]["arch"], dataset)
    if model is None:
        return
    # Certification's rewrites speed up the Monte-Carlo estimates (2.4x for LeNet on a CPU, docs/performance.md)
    # and the fast image gradient the attacks; autograd would refuse an in-place ReLU that a backward pass needs.
    model = prepare_for_certification(model, device)
    fast_image_gradients(model)
    data = load_dataset(dataset, "test", root=job.runtime.get("data_root"), download=job.runtime.get("download", False))
    indices = strided_indices(len(data), 1, settings["max_samples"])

    kinds = settings["kinds"]
    for position, kind in enumerate(kinds):
        torch.manual_seed(derived_seed(train_config["seed"], f"analyze/{kind}"))
        rows: list[AnalysisResult] = []
        for group_start in range(0, len(indices), IMAGES_PER_GROUP):
            group = indices[group_start:group_start + IMAGES_PER_GROUP]
            images, labels = images_and_labels(data, group)

            def on_progress(fraction: float, done_before: int = group_start, group_size: int = len(group),
                            position: int = position, kind: str = kind) -> None:
                done = done_before + fraction * group_size
                progress((position + done / len(indices)) / len(kinds), f"{kind}: image {done:.0f}/{len(indices)}")

            rows += _analysis_rows(kind, job.key, model, images, labels, group, settings,
                                   DATASETS[dataset].num_classes, on_progress)
        with store.session() as session:
            session.execute(delete(AnalysisResult).where(AnalysisResult.job_key == job.key,
                                                         AnalysisResult.analysis == kind))
            session.add_all(rows)
    progress(1.0, f"{', '.join(kinds)}: {len(indices)} images")


def _analysis_rows(
    kind: str,
    job_key: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: Sequence[int],
    settings: dict[str, Any],
    num_classes: int,
    on_progress: ProgressCallback,
) -> list[AnalysisResult]:
    common = dict(sigma=settings["sigma"], mc_samples=settings["mc_samples"], batch_size=settings["batch_size"],
                  num_classes=num_classes, on_progress=on_progress)
    if kind == "confidence":
        return [
            AnalysisResult(job_key=job_key, analysis=kind, sample_index=result.index, label=result.label,
                           epsilon=result.epsilon, distance=result.distance, prediction=result.prediction,
                           true_confidence=result.true_confidence, off_class_confidence=result.off_class_confidence)
            for result in confidence_under_attack(
                model, images, labels, indices, epsilons=settings["epsilons"], attack_steps=settings["attack_steps"],
                attack_noise_samples=settings["attack_noise_samples"], **common)
        ]
    return [
        AnalysisResult(job_key=job_key, analysis=kind, sample_index=result.index, label=result.label,
                       distance=result.distance, prediction=result.prediction, mixing_ratio=result.ratio)
        for result in equal_confidence_mixing_ratios(
            model, images, labels, indices, alpha=settings["mix_alpha"], steps=settings["mix_steps"],
            max_norm=settings["mix_max_norm"], noise_samples=settings["mix_noise_samples"], grid=settings["grid"],
            **common)
    ]
