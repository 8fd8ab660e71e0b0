"""Aggregate job: summarise each certified config of an experiment (ACR, certified accuracy at radii).

Also writes each config's certificates in the field's TSV log format under `store/results/<experiment>/`.
The summary itself (`summarise_config`) is torch-free and shared with `smx import`, which stores an imported
log's summary exactly as this job would have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select

from smx.db.models import Aggregate, CertifiedAccuracy, Experiment, ExperimentJob, Job
from smx.db.queries import certification_log_rows
from smx.db.store import Store
from smx.science.metrics import DEFAULT_RADII, RADIUS_DECIMALS, Outcomes, summarize, write_certification_log
from smx.tasks.progress import ProgressReporter


def aggregate_radii(report_radii: Iterable[float]) -> list[float]:
    """The radii a summary covers: the spec's report radii and, for the results view's columns, the defaults;
    rounded to RADIUS_DECIMALS, so that radii the spec tells apart only past them are one radius, not two rows."""
    return sorted({round(radius, RADIUS_DECIMALS) for radius in (*report_radii, *DEFAULT_RADII)})


def summarise_config(job_key: str, experiment: str, entry: dict[str, Any], outcomes: Outcomes,
                     radii: Iterable[float]) -> Aggregate:
    """One certified config's summary row, with its certified accuracy at each radius.

    `entry` is the config's item of an aggregate job's inputs: name, certify_key, method, sigma and swept values;
    `radii` as aggregate_radii gives them.
    """
    summary = summarize(outcomes.radii, outcomes.correct, outcomes.predictions, radii)
    return Aggregate(
        job_key=job_key, certify_key=entry["certify_key"], experiment=experiment, config_name=entry["name"],
        method=entry["method"], sigma=entry["sigma"], hyperparams=entry["swept"],
        num_samples=summary.num_samples, acr=summary.acr, clean_accuracy=summary.clean_accuracy,
        abstain_rate=summary.abstain_rate,
        certified=[CertifiedAccuracy(radius=radius, accuracy=accuracy)
                   for radius, accuracy in summary.certified_accuracy.items()],
    )


def run(store: Store, job: Job, device: str, progress: ProgressReporter) -> None:
    inputs = job.config
    experiment, configs = inputs["experiment"], inputs["configs"]
    radii = aggregate_radii(inputs["radii"])
    results_dir = store.root / "results" / experiment
    # The folder is the experiment's as its spec is now: the aggregate of an edited spec's earlier version, left to
    # finish or retried, must not write the configs it had there, nor remove the current ones.
    with store.read_session() as session:
        current_plan = session.scalar(
            select(ExperimentJob.job_key).join(Experiment, Experiment.id == ExperimentJob.experiment_id)
            .where(Experiment.name == experiment, ExperimentJob.job_key == job.key)) is not None
    if current_plan:
        results_dir.mkdir(parents=True, exist_ok=True)
    else:
        print(f"not in {experiment}'s current plan: {results_dir} is left as it is", flush=True)
    summaries = []
    for position, entry in enumerate(configs):
        with store.read_session() as session:
            rows = certification_log_rows(session, entry["certify_key"])
        summaries.append(summarise_config(job.key, experiment, entry, Outcomes.of_rows(rows), radii))
        if current_plan:
            write_certification_log(results_dir / f"{entry['name']}.tsv", rows)
        progress((position + 1) / len(configs), f"config {position + 1}/{len(configs)}")
    if current_plan:
        # An edited spec's dropped configs would otherwise stay beside the others and be read as its results.
        current = {f"{entry['name']}.tsv" for entry in configs}
        for stale in results_dir.glob("*.tsv"):
            if stale.name not in current:
                stale.unlink(missing_ok=True)
    # One transaction: a rerun replaces the previous summaries whole, never leaving a half-written set.
    with store.session() as session:
        session.execute(delete(Aggregate).where(Aggregate.job_key == job.key))
        session.add_all(summaries)
