"""Checkpoint records: every checkpoint file the store keeps has a row with its sha256.

A row records the file's absolute path, and names a checkpoint by its job and file name: a store moved or copied
elsewhere, or whose files another machine mounts at another path, reads the file from its own files
(`Store.located_checkpoint`), and falls back on the recorded path only where its own files lack it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from smx.db.models import AnalysisResult, Certificate, Checkpoint, Job, JobParent
from smx.db.store import Store
from smx.errors import UserError
from smx.science.models import build_model
from smx.science.training import SET_ASIDE_SUFFIX, load_weights


class CheckpointError(UserError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rows(session: Session, job_key: str, path: Path) -> list[Checkpoint]:
    """The rows that record the checkpoint file `path` of a job, wherever the store's files were when written."""
    return [row for row in session.scalars(select(Checkpoint).where(Checkpoint.job_key == job_key))
            if Path(row.path).name == path.name]


def _new_row(job_key: str, path: Path, epoch: int) -> Checkpoint:
    return Checkpoint(job_key=job_key, epoch=epoch, path=str(path), sha256=sha256_file(path), size=path.stat().st_size)


def _delete_rows(session: Session, job_key: str, path: Path) -> None:
    for row in _rows(session, job_key, path):
        session.delete(row)


def record(store: Store, job_key: str, path: Path, epoch: int) -> None:
    with store.session() as session:
        _delete_rows(session, job_key, path)
        session.add(_new_row(job_key, path, epoch))


def forget(store: Store, job_key: str, path: Path) -> None:
    with store.session() as session:
        _delete_rows(session, job_key, path)


def is_intact(store: Store, job_key: str, path: Path) -> bool:
    """Whether a checkpoint file still has the bytes recorded for it; True when none were recorded (a run killed
    between writing a checkpoint and recording it), since then nothing can say otherwise."""
    with store.session() as session:
        recorded = [row.sha256 for row in _rows(session, job_key, path)]
    return not recorded or sha256_file(path) in recorded


def mark_final(store: Store, job_key: str, path: Path, epoch: int) -> None:
    with store.session() as session:
        if not _rows(session, job_key, path):
            session.add(_new_row(job_key, path, epoch))
            session.flush()
        for row in session.scalars(select(Checkpoint).where(Checkpoint.job_key == job_key)):
            row.final = Path(row.path).name == path.name


def retrain_after_corruption(store: Store, train_key: str, waiting_key: str, reason: str) -> None:
    """Never use a damaged checkpoint: set it aside, queue its training again and make `waiting_key` wait.

    The damaged file is renamed (kept for inspection) so that resuming training cannot pick it up; training
    then continues from the newest intact epoch checkpoint and reproduces the same weights on a CPU, not on a GPU,
    whose kernels are not bit-reproducible. So the results that the model's unfinished jobs stored go too: each job
    would otherwise mix, say, certificates of two models.
    """
    with store.session() as session:
        for row in session.scalars(select(Checkpoint).where(Checkpoint.job_key == train_key, Checkpoint.final)):
            path = store.located_checkpoint(row.job_key, row.path)
            if path.exists():
                path.rename(path.with_name(path.name + SET_ASIDE_SUFFIX))
            session.delete(row)
        # A running job other than the waiting one read the model before it was damaged, and finishes with it.
        unfinished = select(JobParent.child_key).join(Job, Job.key == JobParent.child_key).where(
            JobParent.parent_key == train_key, (Job.status.not_in(("done", "running"))) | (Job.key == waiting_key))
        session.execute(delete(Certificate).where(Certificate.job_key.in_(unfinished)))
        session.execute(delete(AnalysisResult).where(AnalysisResult.job_key.in_(unfinished)))
        for key in (train_key, waiting_key):
            session.execute(update(Job).where(Job.key == key)
                            .values(status="pending", error=reason, progress_text="waiting to retrain"))


def verified_final(store: Store, train_key: str) -> Path:
    """The trained model's final checkpoint, after checking that its bytes are the ones recorded."""
    with store.session() as session:
        row = session.scalar(select(Checkpoint).where(Checkpoint.job_key == train_key, Checkpoint.final))
    if row is None:
        raise CheckpointError(f"training job {train_key[:12]} has no final checkpoint in the store")
    path = store.located_checkpoint(row.job_key, row.path)
    if not path.is_file() or sha256_file(path) != row.sha256:
        problem = "is missing" if not path.is_file() else "does not match its recorded sha256 (corrupted or truncated)"
        raise CheckpointError(f"checkpoint {path} {problem}")
    return path


def trained_model(store: Store, waiting_key: str, train_key: str, arch: str, dataset: str) -> torch.nn.Module | None:
    """The final model of training `train_key`, its checkpoint verified first.

    None when the checkpoint failed the check: its training is queued again and `waiting_key` waits for it.
    """
    try:
        checkpoint = verified_final(store, train_key)
    except CheckpointError as error:
        retrain_after_corruption(store, train_key, waiting_key, error.message)
        print(f"{error.message}\nIts training was queued again; this job runs once it is done.", flush=True)
        return None
    model = build_model(arch, dataset)
    load_weights(model, checkpoint)
    return model
