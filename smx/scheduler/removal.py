"""`smx remove`: take experiments out of the store, with the jobs, results and files that no other experiment
needs. Jobs are keyed by content and shared, so a job another experiment's plan includes, or that a job left in
the store depends on, stays."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from smx.db.models import (
    Aggregate,
    AnalysisResult,
    Certificate,
    CertifiedAccuracy,
    Checkpoint,
    Experiment,
    ExperimentJob,
    Job,
    JobParent,
    TrainMetric,
    utcnow,
)
from smx.db.queries import require_experiment
from smx.db.store import Store
from smx.errors import UserError
from smx.scheduler.queue import STALE_AFTER, lock_experiment_membership


@dataclass
class Removal:
    """What removing `experiments` takes out of the store, and what it leaves because something else needs it."""

    experiments: list[str]
    job_keys: list[str] = field(default_factory=list)  # the jobs deleted, with their results
    kept: dict[str, list[str]] = field(default_factory=dict)  # job name -> the experiments that still need it
    kept_as_dependency: int = 0  # jobs kept only because a job left in the store depends on them
    certificates: int = 0
    checkpoints: int = 0
    files: list[Path] = field(default_factory=list)  # the store's files of them that exist (see _files)
    not_removed: list[str] = field(default_factory=list)  # files that could not be removed, and why

    def summary(self) -> str:
        kept = len(self.kept) + self.kept_as_dependency
        return (f"{', '.join(self.experiments)}: {len(self.job_keys)} job(s), {self.certificates:,} certificate(s), "
                f"{self.checkpoints} checkpoint(s)" + (f"; {kept} job(s) kept, as other experiments need them"
                                                        if kept else ""))


def plan_removal(session: Session, store: Store, experiments: list[str]) -> Removal:
    """What `remove_experiments` would delete now; a UserError for an unknown name or a job still to stop."""
    for experiment in experiments:
        require_experiment(session, experiment)
    removal = Removal(sorted(set(experiments)))
    candidates = _jobs_of(session, removal.experiments)
    others = session.execute(
        select(ExperimentJob.job_key, Experiment.name).join(Experiment, Experiment.id == ExperimentJob.experiment_id)
        .where(ExperimentJob.job_key.in_(list(candidates)), Experiment.name.not_in(removal.experiments))
        .order_by(Experiment.name))
    needed: dict[str, list[str]] = {}
    for key, experiment in others:
        needed.setdefault(key, []).append(experiment)
    deleted = candidates - needed.keys()
    # Whatever stays must keep its parents and the certify jobs its summaries name (a plan includes its parents,
    # but an earlier version's aggregate job may be shared with nothing current).
    while True:
        listed = list(deleted)
        depended_on = {*session.scalars(select(JobParent.parent_key).where(
            JobParent.parent_key.in_(listed), JobParent.child_key.not_in(listed))), *session.scalars(
            select(Aggregate.certify_key).where(Aggregate.certify_key.in_(listed), Aggregate.job_key.not_in(listed)))}
        if not depended_on:
            break
        deleted -= depended_on
        removal.kept_as_dependency += len(depended_on)
    jobs = list(session.scalars(select(Job).where(Job.key.in_(list(deleted))).order_by(Job.name)))
    _refuse_unfinished(jobs, removal.experiments)
    names = {key: name for key, name in session.execute(select(Job.key, Job.name).where(Job.key.in_(list(needed))))}
    removal.kept = dict(sorted((names[key], experiments) for key, experiments in needed.items()))
    removal.job_keys = [job.key for job in jobs]
    removal.certificates = session.scalar(select(func.count()).select_from(Certificate)
                                          .where(Certificate.job_key.in_(list(deleted)))) or 0
    removal.checkpoints = session.scalar(select(func.count()).select_from(Checkpoint)
                                         .where(Checkpoint.job_key.in_(list(deleted)))) or 0
    removal.files = [path for path in _files(store, removal) if path.exists()]
    return removal


def remove_experiments(store: Store, experiments: list[str]) -> Removal:
    """Delete the experiments, and their jobs and results that nothing left in the store needs, in one transaction;
    then their files. A file that cannot be removed is named in `not_removed`: the store stays whole either way."""
    with store.session() as session:
        lock_experiment_membership(session)
        removal = plan_removal(session, store, experiments)
        keys = removal.job_keys
        session.execute(delete(CertifiedAccuracy).where(CertifiedAccuracy.aggregate_id.in_(
            select(Aggregate.id).where(Aggregate.job_key.in_(keys)))))
        for table in (Aggregate, Certificate, TrainMetric, Checkpoint, AnalysisResult):
            session.execute(delete(table).where(table.job_key.in_(keys)))
        session.execute(delete(ExperimentJob).where(ExperimentJob.experiment_id.in_(
            select(Experiment.id).where(Experiment.name.in_(removal.experiments)))))
        session.execute(delete(Experiment).where(Experiment.name.in_(removal.experiments)))
        session.execute(delete(JobParent).where(JobParent.child_key.in_(keys)))
        session.execute(delete(Job).where(Job.key.in_(keys)))
    for path in removal.files:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as error:
            removal.not_removed.append(f"{path}: {error.strerror or error}")
    return removal


def _jobs_of(session: Session, experiments: list[str]) -> set[str]:
    """The jobs of the experiments' current plans, and those behind the summaries of their earlier versions."""
    keys = set(session.scalars(select(ExperimentJob.job_key).join(Experiment).where(Experiment.name.in_(experiments))))
    keys |= set(session.scalars(select(Aggregate.job_key).where(Aggregate.experiment.in_(experiments))))
    frontier = set(keys)
    while frontier:
        parents = select(JobParent.parent_key).where(JobParent.child_key.in_(list(frontier)))
        frontier = set(session.scalars(parents)) - keys
        keys |= frontier
    return keys


def _refuse_unfinished(jobs: list[Job], experiments: list[str]) -> None:
    """Deleting a job that a worker may yet claim or still runs would leave its process writing into nothing."""
    now = utcnow()
    busy = [job for job in jobs if job.status in ("pending", "running") or (
        job.status == "cancelled" and job.pid is not None and job.heartbeat_at is not None
        and now - job.heartbeat_at < STALE_AFTER)]
    if busy:
        listed = ", ".join(f"{job.name} ({'stopping' if job.status == 'cancelled' else job.status})"
                           for job in busy[:5]) + (f" and {len(busy) - 5} more" if len(busy) > 5 else "")
        raise UserError(f"cannot remove {', '.join(experiments)} yet: {len(busy)} of its jobs are not finished "
                        f"({listed}).\nFix: `smx cancel {' '.join(experiments)}` first (a cancelled job's process "
                        "stops within seconds), or wait for them.")


def _files(store: Store, removal: Removal) -> list[Path]:
    """The store's files of the removed jobs and experiments: checkpoints, logs, certification logs, plots."""
    plots = [store.root / "plots" / f"{experiment}{suffix}" for experiment in removal.experiments
             for suffix in (".png", "-confidence.png", "-mixing-ratio.png")]
    return [*(store.checkpoint_dir(key) for key in removal.job_keys),
            *(store.log_path(key) for key in removal.job_keys),
            *(store.root / "results" / experiment for experiment in removal.experiments), *plots]
