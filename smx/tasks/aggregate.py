"""Aggregate job: summarise each certified config of an experiment (ACR, certified accuracy at radii).

Also writes each config's certificates in the field's TSV log format under `store/results/<experiment>/`.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from smx.db.models import Aggregate, Certificate, CertifiedAccuracy, Job
from smx.db.store import Store
from smx.science.metrics import DEFAULT_RADII, LogRow, summarize, write_certification_log
from smx.tasks.progress import ProgressReporter


def run(store: Store, job: Job, device: str, progress: ProgressReporter) -> None:
    inputs = job.config
    experiment, configs = inputs["experiment"], inputs["configs"]
    # The results view has columns at the default radii, so those are always computed too.
    radii = sorted(set(inputs["radii"]) | set(DEFAULT_RADII))
    results_dir = store.root / "results" / experiment
    results_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for position, entry in enumerate(configs):
        with store.read_session() as session:
            rows = session.scalars(select(Certificate).where(Certificate.job_key == entry["certify_key"])
                                   .order_by(Certificate.sample_index)).all()
        summary = summarize([row.radius for row in rows], [row.correct for row in rows],
                            [row.prediction for row in rows], radii)
        summaries.append(Aggregate(
            job_key=job.key, certify_key=entry["certify_key"], experiment=experiment, config_name=entry["name"],
            method=entry["method"], sigma=entry["sigma"], hyperparams=entry["swept"],
            num_samples=summary.num_samples, acr=summary.acr, clean_accuracy=summary.clean_accuracy,
            abstain_rate=summary.abstain_rate,
            certified=[CertifiedAccuracy(radius=round(radius, 6), accuracy=accuracy)
                       for radius, accuracy in summary.certified_accuracy.items()],
        ))
        write_certification_log(results_dir / f"{entry['name']}.tsv", [
            LogRow(index=row.sample_index, label=row.label, prediction=row.prediction, radius=row.radius,
                   correct=row.correct, seconds=row.seconds)
            for row in rows
        ])
        progress((position + 1) / len(configs), f"config {position + 1}/{len(configs)}")
    # One transaction: a rerun replaces the previous summaries whole, never leaving a half-written set.
    with store.session() as session:
        session.execute(delete(Aggregate).where(Aggregate.job_key == job.key))
        session.add_all(summaries)
