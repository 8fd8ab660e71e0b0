"""The store's tables, in SQLAlchemy 2.0 typed ORM style. Users query these names directly."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bump when a table changes, and add the step that upgrades an older store to smx/db/migrations.py.
SCHEMA_VERSION = 5

JOB_STATUSES = ("pending", "running", "done", "failed", "cancelled")
JOB_KINDS = ("train", "certify", "analyze", "aggregate")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON}


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec_path: Mapped[str] = mapped_column(Text)
    spec_text: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    members: Mapped[list[ExperimentJob]] = relationship(back_populates="experiment", cascade="all, delete-orphan")


class ExperimentJob(Base):
    """Which jobs an experiment needs. A job can serve several experiments (same key, run once)."""

    __tablename__ = "experiment_jobs"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), primary_key=True)
    config_name: Mapped[str | None] = mapped_column(String(200))
    swept: Mapped[dict] = mapped_column(default=dict)

    experiment: Mapped[Experiment] = relationship(back_populates="members")
    job: Mapped[Job] = relationship()


class Job(Base):
    __tablename__ = "jobs"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(300))
    config: Mapped[dict] = mapped_column()
    # Where data live etc.: needed to run the job, never part of its key.
    runtime: Mapped[dict] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    slot: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_text: Mapped[str] = mapped_column(String(200), default="")
    # The progress the current attempt started from (earlier attempts' work; 0 when claimed, until a resuming task
    # says otherwise): an ETA divides this attempt's time by the work done in it, not by all the work done.
    attempt_start_progress: Mapped[float | None] = mapped_column(Float)
    log_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # The Slurm job last asked to run this job, when it was sent to Slurm (smx submit --executor slurm).
    slurm_job_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_jobs_status", "status"),)


class JobParent(Base):
    __tablename__ = "job_parents"

    child_key: Mapped[str] = mapped_column(ForeignKey("jobs.key", ondelete="CASCADE"), primary_key=True)
    parent_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), primary_key=True)

    __table_args__ = (Index("ix_job_parents_parent", "parent_key"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    final: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainMetric(Base):
    __tablename__ = "train_metrics"

    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float] = mapped_column(Float)
    noisy_accuracy: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    extras: Mapped[dict] = mapped_column(default=dict)


class Certificate(Base):
    """One certified test sample: CERTIFY's answer for it."""

    __tablename__ = "certificates"

    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key", ondelete="CASCADE"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[int] = mapped_column(Integer)
    prediction: Mapped[int] = mapped_column(Integer)
    radius: Mapped[float] = mapped_column(Float)
    correct: Mapped[int] = mapped_column(Integer)
    pa_lower: Mapped[float | None] = mapped_column(Float)
    count: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)

    # Certified-accuracy curves count a job's rows by correctness and radius: this index answers that alone.
    __table_args__ = (Index("ix_certificates_curve", "job_key", "correct", "radius"),)


class AnalysisResult(Base):
    """One test image in one analysis of a trained model, as computed by its analyze job.

    "confidence" rows (Table 1 of the SmoothMix paper) have one row per image and attack radius: epsilon, the
    image's distance after the attack, the smoothed prediction there and the two confidences. "mixing_ratio"
    rows (Figure 3) exist for the images the smoothed classifier gets right: distance is that of the adversary,
    mixing_ratio the smallest grid ratio at which the prediction changes and prediction the class it changes
    to, both NULL when it does not change up to the adversary itself.
    """

    __tablename__ = "analysis_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key", ondelete="CASCADE"))
    analysis: Mapped[str] = mapped_column(String(32))  # "confidence" or "mixing_ratio"
    sample_index: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer)
    epsilon: Mapped[float | None] = mapped_column(Float)  # the PGD radius (0.0: clean); NULL for mixing_ratio
    distance: Mapped[float] = mapped_column(Float)  # L2 distance of the attacked point from the test image
    prediction: Mapped[int | None] = mapped_column(Integer)
    true_confidence: Mapped[float | None] = mapped_column(Float)  # estimated P(f(x + delta) = y)
    off_class_confidence: Mapped[float | None] = mapped_column(Float)  # estimated max_{c != y} P(f(x + delta) = c)
    mixing_ratio: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_analysis_results_job", "job_key", "analysis"),)


class Aggregate(Base):
    """One certified config's summary, as computed by an experiment's aggregate job."""

    __tablename__ = "aggregates"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key", ondelete="CASCADE"), index=True)
    certify_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"))
    experiment: Mapped[str] = mapped_column(String(64), index=True)
    config_name: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(32))
    sigma: Mapped[float] = mapped_column(Float)
    hyperparams: Mapped[dict] = mapped_column(default=dict)
    num_samples: Mapped[int] = mapped_column(Integer)
    acr: Mapped[float] = mapped_column(Float)
    clean_accuracy: Mapped[float] = mapped_column(Float)
    abstain_rate: Mapped[float] = mapped_column(Float)

    certified: Mapped[list[CertifiedAccuracy]] = relationship(cascade="all, delete-orphan")


class CertifiedAccuracy(Base):
    __tablename__ = "certified_accuracy"

    aggregate_id: Mapped[int] = mapped_column(ForeignKey("aggregates.id", ondelete="CASCADE"), primary_key=True)
    radius: Mapped[float] = mapped_column(Float, primary_key=True)
    accuracy: Mapped[float] = mapped_column(Float)
