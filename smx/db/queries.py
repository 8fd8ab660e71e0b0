"""Read-side queries shared by `smx status`, the submit progress display, reports and the TUI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from smx.db.models import (
    JOB_STATUSES,
    Aggregate,
    AnalysisResult,
    Certificate,
    Experiment,
    ExperimentJob,
    Job,
    JobParent,
    utcnow,
)
from smx.errors import UserError
from smx.science.metrics import LogRow, Outcomes

# Workers beat every 5 s (scheduler.worker.HEARTBEAT_SECONDS): six missed beats say more than a slow disk.
SILENT_WORKER_SECONDS = 30.0


def elapsed_seconds(status: str, started_at: datetime | None, finished_at: datetime | None,
                    now: datetime) -> float | None:
    """How long the job has run (so far, or until it ended). A job back in the queue has no running time until a
    worker takes it again."""
    if started_at is None or status == "pending":
        return None
    return max(((finished_at or now) - started_at).total_seconds(), 0.0)


def silent_seconds(status: str, heartbeat_at: datetime | None, now: datetime) -> float | None:
    """How long a running job's worker has not been heard from, once that is long enough to be a sign that it
    stopped (a killed machine or process); None otherwise. Whether the job is resumed is decided elsewhere
    (scheduler.queue.recover_abandoned: a free slot lock on this host, or a heartbeat 5 minutes old)."""
    if status != "running" or heartbeat_at is None:
        return None
    silent = (now - heartbeat_at).total_seconds()
    return silent if silent > SILENT_WORKER_SECONDS else None


PROVISIONAL_MARK = "*"  # beside a provisional best ACR, in `smx status` and the TUI
PROVISIONAL_BEST_ACR = ("provisional: the best of the configs certified so far, as the experiment's aggregate job is "
                        "not done")


@dataclass
class ExperimentOverview:
    name: str
    description: str
    configs: int
    counts: dict[str, int]
    best_acr: float | None
    updated_at: datetime
    # The best ACR is that of the configs certified so far: the aggregate job is not done (see report.Summaries).
    best_acr_provisional: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class JobView:
    key: str
    kind: str
    name: str
    config_name: str | None
    in_experiment: bool  # some experiment's current plan includes it; else an edited spec left it behind
    status: str
    progress: float
    progress_text: str
    device: str | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    log_path: str | None
    blocked_by: str | None  # status of an unfinished parent that keeps a pending job waiting
    heartbeat_at: datetime | None = None  # a running job's worker beats every few seconds
    attempt_start_progress: float | None = None  # where the current attempt started (earlier attempts' work)

    @property
    def silent_seconds(self) -> float | None:
        return silent_seconds(self.status, self.heartbeat_at, utcnow())

    @property
    def elapsed_seconds(self) -> float | None:
        return elapsed_seconds(self.status, self.started_at, self.finished_at, utcnow())

    @property
    def eta_seconds(self) -> float | None:
        return eta_seconds(self.status, self.progress, self.elapsed_seconds, self.attempt_start_progress)


# A certify job's (attempts, finished_at): its certificates change only when it runs again, and that changes these.
CertificatesStamp = tuple[int, datetime | None]
# A done certify job's ACR by its key, with the stamp of the certificates it was computed from.
AcrCache = dict[str, tuple[CertificatesStamp, float]]


def experiments_overview(session: Session, acr_cache: AcrCache | None = None) -> list[ExperimentOverview]:
    """Every experiment, newest first. `acr_cache`: kept by a caller that asks again and again (the TUI), so that the
    provisional best ACRs (see ExperimentOverview) read each done job's certificates once."""
    counts: dict[str, dict[str, int]] = {}
    for name, status, number in session.execute(
        select(Experiment.name, Job.status, func.count())
        .join(ExperimentJob, ExperimentJob.experiment_id == Experiment.id)
        .join(Job, Job.key == ExperimentJob.job_key)
        .group_by(Experiment.name, Job.status)
    ):
        counts.setdefault(name, dict.fromkeys(JOB_STATUSES, 0))[status] = number
    configs = dict(session.execute(
        select(Experiment.name, func.count())
        .join(ExperimentJob, ExperimentJob.experiment_id == Experiment.id)
        .join(Job, Job.key == ExperimentJob.job_key)
        # Certified configs: imported logs have no training job, and certify-only variations count too.
        .where(Job.kind == "certify")
        .group_by(Experiment.name)
    ).all())
    # Over the experiment's current plan only, as in the `results` view (db/views.py).
    best = dict(session.execute(
        select(Aggregate.experiment, func.max(Aggregate.acr))
        .join(Experiment, Experiment.name == Aggregate.experiment)
        .join(ExperimentJob,
              (ExperimentJob.experiment_id == Experiment.id) & (ExperimentJob.job_key == Aggregate.job_key))
        .group_by(Aggregate.experiment)
    ).all())
    provisional = _provisional_best_acr(session, set(best), {} if acr_cache is None else acr_cache)
    return [
        ExperimentOverview(name=experiment.name, description=experiment.description,
                           configs=configs.get(experiment.name, 0),
                           counts=counts.get(experiment.name, dict.fromkeys(JOB_STATUSES, 0)),
                           best_acr=best.get(experiment.name, provisional.get(experiment.name)),
                           updated_at=experiment.updated_at,
                           best_acr_provisional=experiment.name not in best and experiment.name in provisional)
        for experiment in session.scalars(select(Experiment).order_by(Experiment.updated_at.desc()))
    ]


def _provisional_best_acr(session: Session, exclude: set[str], cache: AcrCache) -> dict[str, float]:
    """Each experiment's best ACR over its done certify jobs, for those without stored summaries yet: the ACR that
    its aggregate job will store for each (science.metrics.average_certified_radius, the mean of radius x
    correct), averaged in the database, and only for jobs that `cache` does not hold as they are now."""
    done = session.execute(
        select(Experiment.name, Job.key, Job.attempts, Job.finished_at)
        .join(ExperimentJob, ExperimentJob.experiment_id == Experiment.id)
        .join(Job, Job.key == ExperimentJob.job_key)
        .where(Job.kind == "certify", Job.status == "done", Experiment.name.not_in(exclude))
    ).all()
    stamps: dict[str, CertificatesStamp] = {row.key: (row.attempts, row.finished_at) for row in done}
    stale = [key for key, stamp in stamps.items() if key not in cache or cache[key][0] != stamp]
    if stale:
        for key, acr in session.execute(
            select(Certificate.job_key, func.avg(Certificate.radius * Certificate.correct))
            .where(Certificate.job_key.in_(stale)).group_by(Certificate.job_key)
        ):
            cache[key] = (stamps[key], acr)
    best: dict[str, float] = {}
    for row in done:
        if row.key in cache and cache[row.key][0] == stamps[row.key]:
            acr = cache[row.key][1]
            best[row.name] = max(best.get(row.name, acr), acr)
    return best


def jobs_view(session: Session, experiment: str | None = None, statuses: list[str] | None = None) -> list[JobView]:
    parent = aliased(Job)
    blocker = (
        select(func.min(parent.status))
        .join(JobParent, JobParent.parent_key == parent.key)
        .where(JobParent.child_key == Job.key, parent.status != "done")
        .correlate(Job)
        .scalar_subquery()
    )
    query = select(Job, ExperimentJob.config_name, ExperimentJob.job_key, blocker)
    if experiment is not None:
        query = query.join(ExperimentJob, ExperimentJob.job_key == Job.key).join(
            Experiment, Experiment.id == ExperimentJob.experiment_id).where(Experiment.name == experiment)
    else:
        query = query.outerjoin(ExperimentJob, ExperimentJob.job_key == Job.key)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    views: dict[str, JobView] = {}
    for job, config_name, member_key, blocked_by in session.execute(query.order_by(Job.created_at, Job.key)):
        views.setdefault(job.key, JobView(
            key=job.key, kind=job.kind, name=job.name, config_name=config_name, in_experiment=member_key is not None,
            status=job.status,
            progress=job.progress, progress_text=job.progress_text, device=job.device, attempts=job.attempts,
            started_at=job.started_at, finished_at=job.finished_at, error=job.error, log_path=job.log_path,
            blocked_by=blocked_by if job.status == "pending" else None, heartbeat_at=job.heartbeat_at,
            attempt_start_progress=job.attempt_start_progress,
        ))
    return list(views.values())


def experiment_names(session: Session) -> list[str]:
    return list(session.scalars(select(Experiment.name).order_by(Experiment.name)))


def name_alike_but_for_case(name: str, names: list[str]) -> str | None:
    """The name among `names` that differs from `name` only in case: their results folders and files would be one
    where file names ignore case (macOS, Windows)."""
    return next((other for other in names if other != name and other.casefold() == name.casefold()), None)


def aggregates_of(session: Session, experiment: str) -> list[Aggregate]:
    """The experiment's current summaries (those of its current plan's aggregate job)."""
    current = (
        select(ExperimentJob.job_key)
        .join(Experiment, Experiment.id == ExperimentJob.experiment_id)
        .where(Experiment.name == experiment)
    )
    return list(session.scalars(
        select(Aggregate).where(Aggregate.experiment == experiment, Aggregate.job_key.in_(current))
        .order_by(Aggregate.config_name)
    ))


def certification_log_rows(session: Session, certify_key: str) -> list[LogRow]:
    """A certify job's certificates as rows of the field's certification log, by sample index."""
    return [
        LogRow(index=index, label=label, prediction=prediction, radius=radius, correct=correct, seconds=seconds)
        for index, label, prediction, radius, correct, seconds in session.execute(
            select(Certificate.sample_index, Certificate.label, Certificate.prediction, Certificate.radius,
                   Certificate.correct, Certificate.seconds)
            .where(Certificate.job_key == certify_key).order_by(Certificate.sample_index))
    ]


def certificate_outcomes(session: Session, certify_key: str) -> Outcomes:
    """A certify job's certificates as the columns a summary reads, by sample index."""
    statement = (select(Certificate.radius, Certificate.correct, Certificate.prediction)
                 .where(Certificate.job_key == certify_key).order_by(Certificate.sample_index))
    # Through the driver's own cursor: a paper-scale experiment's provisional results read 400,000 certificates at a
    # time, 0.3 s so against 1.1 s as SQLAlchemy rows. The key is a hexadecimal digest, safe to write into the SQL.
    connection = session.connection()
    cursor = connection.connection.cursor()
    try:
        cursor.execute(str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})))
        columns = np.array(cursor.fetchall(), dtype=np.float64).reshape(-1, 3)
    finally:
        cursor.close()
    return Outcomes(columns[:, 0].copy(), columns[:, 1].astype(np.int64), columns[:, 2].astype(np.int64))


@dataclass
class ConfigAnalysis:
    """One analyze job of an experiment with the rows it stored."""

    config_name: str
    settings: dict[str, Any]  # the job's resolved [analyze] settings
    results: list[AnalysisResult]  # by analysis, epsilon and sample


def analyses_of(session: Session, experiment: str) -> list[ConfigAnalysis]:
    """The analyze jobs of the experiment's current plan that have results, by config name."""
    jobs = session.execute(
        select(ExperimentJob.config_name, Job)
        .join(Job, Job.key == ExperimentJob.job_key)
        .join(Experiment, Experiment.id == ExperimentJob.experiment_id)
        .where(Experiment.name == experiment, Job.kind == "analyze")
        .order_by(ExperimentJob.config_name)
    ).all()
    results: dict[str, list[AnalysisResult]] = {job.key: [] for _, job in jobs}
    for row in session.scalars(
        select(AnalysisResult).where(AnalysisResult.job_key.in_(list(results)))
        .order_by(AnalysisResult.analysis, AnalysisResult.epsilon, AnalysisResult.sample_index)
    ):
        results[row.job_key].append(row)
    return [
        ConfigAnalysis(config_name=config_name, settings=job.config["analyze"], results=results[job.key])
        for config_name, job in jobs
        if results[job.key]
    ]


def require_experiment(session: Session, experiment: str) -> None:
    """Refuse an experiment name that the store does not hold, naming those it does."""
    known = experiment_names(session)
    if experiment not in known:
        raise UserError(f"no experiment named {experiment!r} in the store (known: {', '.join(known) or 'none yet'}).\n"
                        "Fix: check the name against `smx status`, or pass --store for the store that holds it.")


def eta_seconds(status: str, progress: float, elapsed: float | None,
                attempt_start_progress: float | None) -> float | None:
    """How much longer a running job needs at the pace its current attempt has kept; None until that attempt has
    done 1% of the job's work.

    `elapsed` counts this attempt only, so it is set against the work done since the attempt started: a job resumed
    at 60% that has since reached 62% is 2% along at this pace, not 62%.
    """
    done_in_attempt = progress - (attempt_start_progress or 0.0)
    if status != "running" or elapsed is None or done_in_attempt <= 0.01:
        return None
    return elapsed * (1 - progress) / done_in_attempt
