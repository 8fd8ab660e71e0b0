"""`smx remove`: take experiments out of the store, with the jobs, results and files that nothing left in the store
needs. Jobs are keyed by content and shared, so a job another experiment's plan includes, or that a job left in
the store depends on (another experiment's earlier summaries), stays."""

from __future__ import annotations

import contextlib
import shutil
import uuid
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
)
from smx.db.queries import experiment_names, require_experiment
from smx.db.store import ANALYSIS_PLOT_SUFFIXES, Store
from smx.errors import UserError
from smx.scheduler.queue import STOP_GRACE, lock_experiment_membership, may_still_run
from smx.scheduler.slurm import SlurmError, cancel_slurm_jobs

@dataclass(frozen=True)
class KeptJob:
    key: str
    name: str
    experiments: tuple[str, ...]  # whose current plans include it, or whose earlier summaries use it
    in_plans: bool  # which of the two

    def reason(self) -> str:
        experiments = ", ".join(self.experiments)
        return f"in the plan of {experiments}" if self.in_plans else f"earlier summaries of {experiments} use it"


@dataclass
class Removal:
    """What removing `experiments` takes out of the store, and what it leaves because something else needs it."""

    experiments: list[str]
    job_keys: list[str] = field(default_factory=list)  # the jobs deleted, with their results
    kept: list[KeptJob] = field(default_factory=list)
    certificates: int = 0
    checkpoints: int = 0
    files: list[Path] = field(default_factory=list)  # the store's files of them that exist (see _files)
    slurm_job_ids: list[str] = field(default_factory=list)  # of the cancelled jobs deleted
    not_removed: list[str] = field(default_factory=list)  # files that could not be removed, and why

    def summary(self) -> str:
        return (f"{', '.join(self.experiments)}: {len(self.job_keys)} job(s), {self.certificates:,} certificate(s), "
                f"{self.checkpoints} checkpoint(s)" + (f"; {len(self.kept)} job(s) kept for other experiments"
                                                        if self.kept else ""))


def plan_removal(session: Session, store: Store, experiments: list[str], *, lock: bool = False) -> Removal:
    """What `remove_experiments` would delete now; a UserError for an unknown name or a job still to stop.
    `lock`: lock the rows of the jobs to delete till the transaction ends, so that no retry or claim changes them."""
    for experiment in experiments:
        require_experiment(session, experiment)
    removal = Removal(sorted(set(experiments)))
    candidates = _jobs_of(session, removal.experiments)
    planned_elsewhere: dict[str, list[str]] = {}
    for key, experiment in session.execute(
        select(ExperimentJob.job_key, Experiment.name).join(Experiment, Experiment.id == ExperimentJob.experiment_id)
        .where(ExperimentJob.job_key.in_(list(candidates)), Experiment.name.not_in(removal.experiments))
        .order_by(Experiment.name)
    ):
        planned_elsewhere.setdefault(key, []).append(experiment)
    deleted = candidates - planned_elsewhere.keys()
    kept_for_summaries: set[str] = set()
    # Whatever stays keeps its parents and the certify jobs its summaries name.
    while True:
        listed = list(deleted)
        depended_on = {*session.scalars(select(JobParent.parent_key).where(
            JobParent.parent_key.in_(listed), JobParent.child_key.not_in(listed))), *session.scalars(
            select(Aggregate.certify_key).where(Aggregate.certify_key.in_(listed), Aggregate.job_key.not_in(listed)))}
        if not depended_on:
            break
        deleted -= depended_on
        kept_for_summaries |= depended_on
    query = select(Job).where(Job.key.in_(list(deleted))).order_by(Job.name)
    jobs = list(session.scalars(query.with_for_update() if lock else query))
    _refuse_unfinished(jobs, removal.experiments)
    names = dict(session.execute(select(Job.key, Job.name).where(Job.key.in_([*planned_elsewhere,
                                                                               *kept_for_summaries]))).all())
    summarised_by = _summarised_by(session, kept_for_summaries, deleted)
    removal.kept = sorted([*(KeptJob(key, names[key], tuple(experiments), True)
                             for key, experiments in planned_elsewhere.items()),
                           *(KeptJob(key, names[key], summarised_by.get(key, ()), False)
                             for key in kept_for_summaries)], key=lambda job: (job.name, job.key))
    removal.job_keys = [job.key for job in jobs]
    removal.certificates = session.scalar(select(func.count()).select_from(Certificate)
                                          .where(Certificate.job_key.in_(list(deleted)))) or 0
    removal.checkpoints = session.scalar(select(func.count()).select_from(Checkpoint)
                                         .where(Checkpoint.job_key.in_(list(deleted)))) or 0
    removal.slurm_job_ids = sorted({job.slurm_job_id for job in jobs if job.slurm_job_id and job.status == "cancelled"})
    remaining = set(experiment_names(session)) - set(removal.experiments)
    removal.files = [path for path in _files(store, removal, jobs, remaining) if path.exists()]
    return removal


def remove_experiments(store: Store, experiments: list[str], confirmed: list[str] | None = None) -> Removal:
    """Delete the experiments, and their jobs and results that nothing left in the store needs, in one transaction;
    their files are moved aside before it commits and deleted after. A file that cannot be removed is named in
    `not_removed`: the store stays whole either way. `confirmed`: the job keys the user agreed to delete; a store
    that changed since is an error, and nothing is removed."""
    trash = store.root / "trash" / uuid.uuid4().hex
    moved: list[tuple[Path, Path]] = []
    try:
        with store.session() as session:
            lock_experiment_membership(session)
            removal = plan_removal(session, store, experiments, lock=True)
            if confirmed is not None and sorted(confirmed) != sorted(removal.job_keys):
                raise UserError(f"the store changed while smx remove asked: {', '.join(removal.experiments)} now has "
                                f"{len(removal.job_keys)} job(s) to delete, not {len(confirmed)}; nothing was removed."
                                "\nFix: run smx remove again.")
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
            # Moved aside before the commit: once it commits, a submit may queue the same keys again, and a worker
            # may write a new checkpoint or log where these were.
            _move_aside(removal, trash, moved)
    except BaseException:
        for original, aside in reversed(moved):
            with contextlib.suppress(OSError):  # the rollback left the rows: their files go back beside them
                aside.rename(original)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    if trash.exists():
        removal.not_removed.append(f"{trash} (the files moved aside): some could not be deleted")
    with contextlib.suppress(OSError):
        trash.parent.rmdir()  # only when empty: another smx remove may be using it
    try:
        cancel_slurm_jobs(removal.slurm_job_ids)
    except SlurmError:
        pass  # no Slurm here: its jobs, cancelled when their smx jobs were, have nothing left to run
    return removal


def _move_aside(removal: Removal, trash: Path, moved: list[tuple[Path, Path]]) -> None:
    """Move the removal's files into `trash`, recording each in `moved` at once, so that an interruption midway
    still knows what to put back."""
    for index, path in enumerate(removal.files):
        aside = trash / f"{index}-{path.name}"
        try:
            trash.mkdir(parents=True, exist_ok=True)
            path.rename(aside)
        except OSError as error:
            removal.not_removed.append(f"{path}: {error.strerror or error}")
            continue
        moved.append((path, aside))


def _jobs_of(session: Session, experiments: list[str]) -> set[str]:
    """The jobs of the experiments' current plans and of the summaries of their earlier versions, the jobs these
    depend on, and the jobs that depend on them and that no experiment's plan or summaries hold (an earlier
    version's analyses, or certifications that never reached an aggregate job)."""
    keys = set(session.scalars(select(ExperimentJob.job_key).join(Experiment).where(Experiment.name.in_(experiments))))
    keys |= set(session.scalars(select(Aggregate.job_key).where(Aggregate.experiment.in_(experiments))))
    held_elsewhere = select(ExperimentJob.job_key).union(
        select(Aggregate.job_key).where(Aggregate.experiment.not_in(experiments)))
    frontier = set(keys)
    while frontier:
        listed = list(frontier)
        parents = select(JobParent.parent_key).where(JobParent.child_key.in_(listed))
        children = select(JobParent.child_key).where(JobParent.parent_key.in_(listed),
                                                     JobParent.child_key.not_in(held_elsewhere))
        frontier = {*session.scalars(parents), *session.scalars(children)} - keys
        keys |= frontier
    return keys


def _summarised_by(session: Session, keys: set[str], deleted: set[str]) -> dict[str, tuple[str, ...]]:
    """The experiments whose summaries left in the store use each job: a certify job they name, or its training."""
    parents: dict[str, set[str]] = {}
    for child, parent in session.execute(select(JobParent.child_key, JobParent.parent_key)
                                         .where(JobParent.parent_key.in_(list(keys)))):
        parents.setdefault(child, set()).add(parent)
    summarised: dict[str, set[str]] = {}
    for certify_key, experiment in session.execute(
            select(Aggregate.certify_key, Aggregate.experiment)
            .where(Aggregate.certify_key.in_([*keys, *parents]), Aggregate.job_key.not_in(list(deleted)))):
        for key in ({certify_key} & keys) | parents.get(certify_key, set()):
            summarised.setdefault(key, set()).add(experiment)
    return {key: tuple(sorted(experiments)) for key, experiments in summarised.items()}


def _refuse_unfinished(jobs: list[Job], experiments: list[str]) -> None:
    """Deleting a job that a worker may yet claim or still runs would leave its process writing into nothing."""
    unfinished = [job for job in jobs if job.status in ("pending", "running")]
    stopping = [job for job in jobs if job.status in ("failed", "cancelled") and may_still_run(job)]
    if unfinished:
        raise UserError(f"cannot remove {', '.join(experiments)} yet: {len(unfinished)} of its jobs are pending or "
                        f"running ({_listed(unfinished)}).\nFix: `smx cancel {' '.join(experiments)}` first, or "
                        "wait for them to finish.")
    if stopping:
        raise UserError(f"cannot remove {', '.join(experiments)} yet: {_listed(stopping, status=False)} stopped while "
                        f"running, and the process may not have ended yet.\nFix: run smx remove again in a few seconds "
                        f"(at most {int(STOP_GRACE.total_seconds())}).")


def _listed(jobs: list[Job], status: bool = True) -> str:
    shown = ", ".join(f"{job.name} ({job.status})" if status else job.name for job in jobs[:5])
    return shown + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")


def _files(store: Store, removal: Removal, jobs: list[Job], remaining: set[str]) -> list[Path]:
    """The store's files of the removed jobs and experiments: checkpoints, logs, Slurm job folders, certification
    logs, exports and default plots. A plot another experiment's name could have written is left alone (the plot
    of "a-confidence" is also the confidence plot of "a")."""
    plots = []
    for experiment in removal.experiments:
        for stem in (experiment, *(experiment + suffix for suffix in ANALYSIS_PLOT_SUFFIXES.values())):
            writers = {stem, *(stem.removesuffix(suffix) for suffix in ANALYSIS_PLOT_SUFFIXES.values())}
            if not writers & remaining:
                plots.append(store.root / "plots" / f"{stem}.png")
    slurm_ids = sorted({job.slurm_job_id for job in jobs if job.slurm_job_id})
    return [*(store.checkpoint_dir(job.key) for job in jobs), *(store.log_path(job.key) for job in jobs),
            *(store.root / "slurm" / slurm_id for slurm_id in slurm_ids),
            *(store.root / "results" / experiment for experiment in removal.experiments),
            *(store.root / "exports" / name for experiment in removal.experiments
              for name in (experiment, f"{experiment}.csv")
              # exports/a.csv: the TUI's CSV of a, or `smx export`'s folder of a.csv
              if not {name, name.removesuffix(".csv")} & remaining),
            *plots]
