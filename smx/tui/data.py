"""Reading what the TUI shows from the store, in a worker thread.

Everything here returns the plain dataclasses of smx/tui/model.py and leaves the counting to SQL, so that a refresh
stays cheap with 10,000 jobs and a million certificates. There is no UI code here: the widgets turn these into
cells and charts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, case, cast, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from smx.db.models import Certificate, Checkpoint, Experiment, ExperimentJob, Job, JobParent, TrainMetric, utcnow
from smx.db.queries import AcrCache, elapsed_seconds, eta_seconds, experiments_overview, silent_seconds
from smx.db.store import NoStoreYet, Store, StoreError, open_store, resolve_location
from smx.errors import UserError
from smx.report import SummaryCache, experiment_results
from smx.tui.model import (
    CheckpointInfo,
    Clock,
    Curve,
    CurveSet,
    EpochMetric,
    JobDetail,
    JobSummary,
    LoadRequest,
    LogUpdate,
    PublishedAcr,
    ResultsTable,
    Snapshot,
)

# Certified accuracy is counted in SQL in radius bins of this width; curves are drawn on the bin edges.
RADIUS_STEP = 0.01
BIN_NUDGE = 1e-9
# Radii past this (nonsense in an imported log: CERTIFY reaches about 3.8 sigma) share the last bin, so that a curve
# has at most this many bins and a radius near the largest float does not overflow a bin number.
LAST_BIN_RADIUS = 100.0
# The jobs list needs only the ends of an error: its first line (the worker's reason, such as a signal) and its last
# lines (the exception, or the job's error message); the job screen loads all of it.
ERROR_HEAD_CHARS = 200
ERROR_TAIL_CHARS = 1500
# The first read of a log shows at most its last this many bytes.
LOG_TAIL_BYTES = 64 * 1024
# Columns of the results view that the results table does not show: the experiment is the table's title.
HIDDEN_RESULT_COLUMNS = ("experiment", "certify_key")


@dataclass(frozen=True)
class RadiusHistogram:
    """One certify job's certificates, counted in SQL: correct ones per radius bin."""

    samples: int
    correct_per_bin: Mapping[int, int]
    correct_radius_sum: float

    @property
    def acr(self) -> float:
        return self.correct_radius_sum / self.samples if self.samples else 0.0

    def certified_accuracy(self, bins: int) -> list[float]:
        """Fraction of samples certified correct with radius >= i * RADIUS_STEP, for i in range(bins)."""
        accuracy = [0.0] * bins
        at_least = 0
        for index in range(max([bins - 1, *self.correct_per_bin]), -1, -1):
            at_least += self.correct_per_bin.get(index, 0)
            if index < bins:
                accuracy[index] = at_least / self.samples if self.samples else 0.0
        return accuracy


Memberships = tuple[tuple[str, str | None], ...]  # JobSummary.memberships


def _summary(row: Any, memberships: Memberships, blocked_by: str | None, now: datetime) -> JobSummary:
    (key, kind, name, status, progress, progress_text, device, attempts, started_at, finished_at, error_tail,
     heartbeat_at, attempt_start_progress) = row[:13]
    elapsed = elapsed_seconds(status, started_at, finished_at, now)
    return JobSummary(key, kind, name, memberships, status, progress, progress_text, device, attempts, elapsed,
                      eta_seconds(status, progress, elapsed, attempt_start_progress), error_tail,
                      blocked_by if status == "pending" else None, silent_seconds(status, heartbeat_at, now))


# substr(error, -n) is SQLite only; this form also works on PostgreSQL.
_error_tail = case(
    (func.length(Job.error) > ERROR_HEAD_CHARS + ERROR_TAIL_CHARS,
     func.substr(Job.error, 1, ERROR_HEAD_CHARS).op("||")("\n").op("||")(
         func.substr(Job.error, func.length(Job.error) - (ERROR_TAIL_CHARS - 1)))),
    else_=Job.error,
).label("error_tail")
_JOB_COLUMNS = (Job.key, Job.kind, Job.name, Job.status, Job.progress, Job.progress_text, Job.device, Job.attempts,
                Job.started_at, Job.finished_at, _error_tail, Job.heartbeat_at, Job.attempt_start_progress)


def _memberships(session: Session, key: str | None = None) -> dict[str, Memberships]:
    """For each job that some experiment has, those experiments with the config name each gives it."""
    query = (select(ExperimentJob.job_key, Experiment.name, ExperimentJob.config_name)
             .join(Experiment, Experiment.id == ExperimentJob.experiment_id).order_by(Experiment.name))
    if key is not None:
        query = query.where(ExperimentJob.job_key == key)
    memberships: dict[str, Memberships] = {}
    for job_key, experiment, config_name in session.execute(query):
        memberships[job_key] = (*memberships.get(job_key, ()), (experiment, config_name))
    return memberships


def _blockers(session: Session, key: str | None = None) -> dict[str, str]:
    """For each pending job with an unfinished parent, that parent's status (one grouped query, not one per job)."""
    parent, child = aliased(Job), aliased(Job)
    query = (select(JobParent.child_key, func.min(parent.status))
             .join(parent, parent.key == JobParent.parent_key)
             .join(child, child.key == JobParent.child_key)
             .where(child.status == "pending", parent.status != "done")
             .group_by(JobParent.child_key))
    if key is not None:
        query = query.where(JobParent.child_key == key)
    return {child: status for child, status in session.execute(query)}


def load_jobs(session: Session, now: datetime) -> list[JobSummary]:
    """Every job in the store, oldest first."""
    memberships = _memberships(session)
    blockers = _blockers(session)
    rows = session.execute(select(*_JOB_COLUMNS).order_by(Job.created_at, Job.key))
    return [_summary(row, memberships.get(row[0], ()), blockers.get(row[0]), now) for row in rows]


def load_job(session: Session, store: Store, key: str, now: datetime) -> JobDetail | None:
    """The job screen's facts; its log and checkpoint as this store holds them (a moved or copied store's own)."""
    row = session.execute(select(*_JOB_COLUMNS, Job.config, Job.error, Job.log_path).where(Job.key == key)).first()
    if row is None:
        return None
    # A job that uses a trained model (certify) shows its training parent's final checkpoint.
    parents = select(JobParent.parent_key).where(JobParent.child_key == key)
    checkpoint = session.execute(
        select(Checkpoint.job_key, Checkpoint.path, Checkpoint.sha256, Checkpoint.epoch)
        .where(or_(Checkpoint.job_key == key, Checkpoint.job_key.in_(parents)), Checkpoint.final.is_(True))
        .order_by(Checkpoint.epoch.desc()).limit(1)
    ).first()
    metrics = session.execute(
        select(TrainMetric.epoch, TrainMetric.loss, TrainMetric.noisy_accuracy)
        .where(TrainMetric.job_key == key).order_by(TrainMetric.epoch)
    )
    return JobDetail(
        summary=_summary(row, _memberships(session, key).get(key, ()), _blockers(session, key).get(key), now),
        config=row.config if isinstance(row.config, dict) else json.loads(row.config or "{}"),
        error=row.error, log_path=str(log) if (log := store.located_log(key, row.log_path)) else None,
        final_checkpoint=CheckpointInfo(checkpoint.job_key, str(store.located_checkpoint(checkpoint.job_key,
                                                                                         checkpoint.path)),
                                        checkpoint.sha256, checkpoint.epoch) if checkpoint else None,
        metrics=[EpochMetric(*metric) for metric in metrics],
    )


def load_results(store: Store, experiment: str, published_acr: PublishedAcr | None = None,
                 summary_cache: SummaryCache | None = None) -> ResultsTable:
    """The experiment's `results` rows; a "published ACR" column only when the provider knows some of them."""
    result = experiment_results(store, experiment, summary_cache=summary_cache)
    # The swept hyperparameters last: their long dotted names would push ACR off an 80-column terminal, and the
    # config names already carry their values.
    shown = sorted((index for index, column in enumerate(result.columns) if column not in HIDDEN_RESULT_COLUMNS),
                   key=lambda index: result.columns[index] in result.swept_columns)
    columns = [result.columns[index] for index in shown]
    rows = [tuple(row[index] for index in shown) for row in result.rows]
    if published_acr is not None:
        published = [published_acr(dict(zip(result.columns, row))) for row in result.rows]
        if any(value is not None for value in published):
            position = columns.index("acr") + 1
            columns.insert(position, "published_acr")
            rows = [row[:position] + (value,) + row[position:] for row, value in zip(rows, published)]
    return ResultsTable(experiment, columns, rows, result.provisional)


def radius_histograms(session: Session, job_keys: list[str]) -> dict[str, RadiusHistogram]:
    """Count each job's certificates in SQL: all of them, and the correct ones per radius bin."""
    # Bin i holds correct answers with i * RADIUS_STEP <= radius < (i + 1) * RADIUS_STEP; the nudge keeps a radius
    # that is a multiple of the step (0.29 / 0.01 = 28.999…) in its own bin. Bin -1 holds the wrong answers and
    # abstentions, which count towards the total only.
    scaled = Certificate.radius / RADIUS_STEP + BIN_NUDGE
    # SQLite's CAST truncates, which is the floor of these non-negative values; PostgreSQL's CAST rounds.
    step_index = cast(scaled if session.get_bind().dialect.name == "sqlite" else func.floor(scaled), Integer)
    last_bin = round(LAST_BIN_RADIUS / RADIUS_STEP)
    radius_bin = case((Certificate.correct != 1, -1), (Certificate.radius >= LAST_BIN_RADIUS, last_bin),
                      else_=step_index)
    counts: dict[str, dict[int, int]] = {key: {} for key in job_keys}
    radius_sums = dict.fromkeys(job_keys, 0.0)
    rows = session.execute(
        select(Certificate.job_key, radius_bin, func.count(), func.sum(Certificate.radius))
        .where(Certificate.job_key.in_(job_keys)).group_by(Certificate.job_key, radius_bin)
    )
    for key, index, number, radius_sum in rows:
        counts[key][index] = number
        if index >= 0:
            radius_sums[key] += radius_sum or 0.0
    return {
        key: RadiusHistogram(samples=sum(bins.values()),
                             correct_per_bin={index: n for index, n in bins.items() if index >= 0},
                             correct_radius_sum=radius_sums[key])
        for key, bins in counts.items()
    }


@dataclass
class _CachedCurve:
    """A certify job's histogram, read when its job had this stamp, and its curve on the last grid asked for."""

    stamp: tuple[Any, ...]
    histogram: RadiusHistogram
    _bins: int = 0
    _accuracy: list[float] = field(default_factory=list)

    def accuracy(self, bins: int) -> list[float]:
        if bins != self._bins:
            self._bins, self._accuracy = bins, self.histogram.certified_accuracy(bins)
        return self._accuracy


class StoreReader:
    """Reads snapshots of one store, opening it once it exists. Used by one worker thread at a time.

    It keeps what need not be read again: each certify job's radius histogram, ACR and provisional summary until
    the job changes, and how far each followed log has been read.
    """

    def __init__(self, location: str | None, *, clock: Clock | None = None,
                 published_acr: PublishedAcr | None = None) -> None:
        self.location = location
        url, self.root = resolve_location(location)
        # An SQLite store that does not exist yet is not a problem, just a store to wait for.
        self._database = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else None
        self.clock = clock or utcnow
        self.published_acr = published_acr
        self._store: Store | None = None
        self._opening = threading.Lock()  # the refresh and an action may both be first to need the store
        self._curve_cache: dict[str, _CachedCurve] = {}
        self._acr_cache: AcrCache = {}
        self._summary_cache: SummaryCache = {}
        self._log: LogFollower | None = None

    def store(self) -> Store:
        """The store; StoreError while there is none (`smx submit` creates it) or it cannot be read."""
        with self._opening:
            if self._store is None:
                self._store = open_store(self.location, create=False)
            return self._store

    def load(self, request: LoadRequest) -> Snapshot:
        now = self.clock()
        try:
            store = self.store()
        except StoreError as error:
            missing = isinstance(error, NoStoreYet) and self._database is not None and not self._database.exists()
            return Snapshot(root=self.root, found=False, problem=None if missing else error.message)
        snapshot = Snapshot(root=store.root, found=True)
        try:
            with store.read_session() as session:
                snapshot.experiments = experiments_overview(session, self._acr_cache)
                snapshot.jobs = load_jobs(session, now)
                names = [experiment.name for experiment in snapshot.experiments]
                snapshot.experiment = request.experiment if request.experiment in names else next(iter(names), None)
                if request.curves and snapshot.experiment:
                    snapshot.curves = self._curves(session, snapshot.experiment)
                if request.job_key:
                    snapshot.job = load_job(session, store, request.job_key, now)
            if request.results and snapshot.experiment:
                snapshot.results = load_results(store, snapshot.experiment, self.published_acr, self._summary_cache)
        except (SQLAlchemyError, UserError) as error:
            # E.g. a store whose tables `smx submit` is still creating: keep polling.
            snapshot.problem = error.message if isinstance(error, UserError) else str(getattr(error, "orig", error))
        if request.job_key:
            snapshot.log = self._follow(snapshot.job.log_path if snapshot.job else None, request.job_key)
        return snapshot

    def _curves(self, session: Session, experiment: str) -> CurveSet:
        certify_jobs = session.execute(
            select(ExperimentJob.config_name, Job.key, Job.status, Job.progress, Job.attempts, Job.finished_at)
            .join(Job, Job.key == ExperimentJob.job_key)
            .join(Experiment, Experiment.id == ExperimentJob.experiment_id)
            .where(Experiment.name == experiment, Job.kind == "certify")
            .order_by(ExperimentJob.config_name)
        ).all()
        # A job's certificates only change while its status, progress or attempt does.
        stamps = {row.key: (row.status, row.progress, row.attempts, row.finished_at) for row in certify_jobs}
        stale = [key for key, stamp in stamps.items() if key not in self._curve_cache
                 or self._curve_cache[key].stamp != stamp]
        if stale:
            for key, histogram in radius_histograms(session, stale).items():
                self._curve_cache[key] = _CachedCurve(stamps[key], histogram)
        cached = {key: self._curve_cache[key] for key in stamps}
        last_bin = max((max(entry.histogram.correct_per_bin, default=0) for entry in cached.values()), default=0)
        bins = last_bin + 2  # up to one step past the largest radius, where every curve has reached 0
        return CurveSet(
            experiment=experiment,
            radii=[index * RADIUS_STEP for index in range(bins)],
            curves=[Curve(config=row.config_name or row.key[:12], job_key=row.key, status=row.status,
                          samples=cached[row.key].histogram.samples, acr=cached[row.key].histogram.acr,
                          accuracy=cached[row.key].accuracy(bins))
                    for row in certify_jobs],
        )

    def _follow(self, path: str | None, job_key: str) -> LogUpdate:
        if self._log is None or self._log.job_key != job_key or self._log.path != path:
            self._log = LogFollower(job_key, path)
        return self._log.read()


class LogFollower:
    """Reads what was appended to a log file since the last read (its last LOG_TAIL_BYTES the first time)."""

    def __init__(self, job_key: str, path: str | None):
        self.job_key = job_key
        self.path = path
        self._offset: int | None = None
        self._partial = b""  # the start of a line still being written
        self._skip_cut_line = False  # reading began inside the file, so the first line read is cut

    def read(self) -> LogUpdate:
        restart = self._offset is None
        if self.path is None:
            return LogUpdate(self.path, [], restart)
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, 2)
                if self._offset is None or size < self._offset:  # the first read, or the log was started over
                    restart = True
                    self._offset = max(0, size - LOG_TAIL_BYTES)
                    self._partial, self._skip_cut_line = b"", self._offset > 0
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return LogUpdate(self.path, [], restart)
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if self._skip_cut_line and lines:
            lines.pop(0)
            self._skip_cut_line = False
        # Progress bars redraw a line with carriage returns: keep what a terminal would show.
        return LogUpdate(self.path, [line.decode("utf-8", errors="replace").rsplit("\r", 1)[-1] for line in lines],
                         restart)
