"""What the TUI shows: plain dataclasses that the data layer (smx/tui/data.py) fills in a worker thread.

Kept apart from the data layer so that the screens can import them without SQLAlchemy and NumPy: the first frame
does not wait for those imports, which the first read of the store does in its worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smx.errors import failure_summary
from smx.reference import PaperAcrValue

if TYPE_CHECKING:
    from smx.db.queries import ExperimentOverview

Clock = Callable[[], datetime]
# Published numbers beside ours: given a `results` row (column -> value), the ACR a paper reports for it.
PublishedAcr = Callable[[Mapping[str, Any]], PaperAcrValue | None]


@dataclass(frozen=True)
class JobSummary:
    """One row of the jobs table. Times are computed when loaded, with the reader's clock."""

    key: str
    kind: str
    name: str  # as the experiment that created the job named it: "<kind>/<its config>"
    # (experiment, the config name it gives the job; None for its aggregate), by experiment name: a job serves every
    # experiment whose plan has it, under each one's config name.
    memberships: tuple[tuple[str, str | None], ...]
    status: str
    progress: float
    progress_text: str
    device: str | None
    attempts: int
    elapsed_seconds: float | None
    eta_seconds: float | None
    error_tail: str | None  # the error's first line and last lines (data.ERROR_HEAD_CHARS, ERROR_TAIL_CHARS)
    blocked_by: str | None  # status of an unfinished parent that keeps a pending job waiting
    silent_seconds: float | None = None  # a running job whose worker has not been heard from for this long

    @property
    def experiments(self) -> tuple[str, ...]:
        return tuple(experiment for experiment, _ in self.memberships)

    def config_label(self, experiment: str | None) -> str:
        """The job's config as `experiment` names it (its aggregate: the experiment's name); with no experiment in
        focus, as "experiment/config" after the first experiment that has it, since experiments share config names."""
        config_names = dict(self.memberships)
        if experiment in config_names:
            return config_names[experiment] or experiment
        if self.memberships:
            first, config_name = self.memberships[0]
            return f"{first}/{config_name}" if config_name else first
        return self.name.removeprefix(f"{self.kind}/")

    @property
    def error_line(self) -> str:
        """What ended the job, in one line of its error."""
        return failure_summary(self.error_tail or "")


@dataclass(frozen=True)
class EpochMetric:
    """One epoch of a training job (train_metrics)."""

    epoch: int
    loss: float
    noisy_accuracy: float


@dataclass(frozen=True)
class CheckpointInfo:
    """A final checkpoint (checkpoints table)."""

    job_key: str  # the training job that wrote it: the job itself, or the parent whose model the job uses
    path: str
    sha256: str
    epoch: int


@dataclass
class JobDetail:
    """Everything the job screen shows besides its log."""

    summary: JobSummary
    config: dict[str, Any]
    error: str | None
    log_path: str | None
    final_checkpoint: CheckpointInfo | None
    metrics: list[EpochMetric]


@dataclass
class LogUpdate:
    """Lines appended to a job's log since the last read; `restart` when the reader starts over."""

    path: str | None
    lines: list[str]
    restart: bool


@dataclass
class ResultsTable:
    """An experiment's `results` rows, swept hyperparameters in columns of their own."""

    experiment: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    provisional: str | None = None  # until the aggregate job is done: which configs are certified so far


@dataclass
class Curve:
    """One certify job's certified accuracy against radius, from the certificates it has stored so far."""

    config: str
    job_key: str
    status: str
    samples: int
    acr: float
    accuracy: list[float]  # at each radius of the curve set's grid


@dataclass
class CurveSet:
    """Certified accuracy against radius for each certify job of an experiment, on one radius grid."""

    experiment: str
    radii: list[float]
    curves: list[Curve]


@dataclass(frozen=True)
class LoadRequest:
    """What the screens on show need besides experiments and jobs, which are always loaded."""

    experiment: str | None = None  # focus for results and curves; None: the most recently updated
    job_key: str | None = None
    results: bool = False
    curves: bool = False


@dataclass
class Snapshot:
    """One read of the store: everything the screens on show need. `found` is False while there is no store."""

    root: Path
    found: bool
    experiments: list[ExperimentOverview] = field(default_factory=list)
    jobs: list[JobSummary] = field(default_factory=list)
    experiment: str | None = None  # the experiment that results and curves are about
    results: ResultsTable | None = None
    curves: CurveSet | None = None
    job: JobDetail | None = None
    log: LogUpdate | None = None
    problem: str | None = None  # a database error met while reading; the next refresh tries again
