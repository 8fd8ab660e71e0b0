"""Checkpoint records: every checkpoint file the store keeps has a row with its sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from sqlalchemy import delete, select, update

from smx.db.models import Checkpoint, Job
from smx.db.store import Store
from smx.errors import UserError
from smx.science.models import build_model
from smx.science.training import load_weights


class CheckpointError(UserError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record(store: Store, job_key: str, path: Path, epoch: int) -> None:
    with store.session() as session:
        session.execute(delete(Checkpoint).where(Checkpoint.job_key == job_key, Checkpoint.path == str(path)))
        session.add(Checkpoint(job_key=job_key, epoch=epoch, path=str(path), sha256=sha256_file(path),
                               size=path.stat().st_size))


def forget(store: Store, path: Path) -> None:
    with store.session() as session:
        session.execute(delete(Checkpoint).where(Checkpoint.path == str(path)))


def mark_final(store: Store, job_key: str, path: Path, epoch: int) -> None:
    with store.session() as session:
        if session.scalar(select(Checkpoint.id).where(Checkpoint.path == str(path))) is None:
            session.add(Checkpoint(job_key=job_key, epoch=epoch, path=str(path), sha256=sha256_file(path),
                                   size=path.stat().st_size))
            session.flush()
        session.execute(update(Checkpoint).where(Checkpoint.job_key == job_key)
                        .values(final=Checkpoint.path == str(path)))


def retrain_after_corruption(store: Store, train_key: str, waiting_key: str, reason: str) -> None:
    """Never use a damaged checkpoint: set it aside, queue its training again and make `waiting_key` wait.

    The damaged file is renamed (kept for inspection) so that resuming training cannot pick it up; training
    then continues from the newest intact epoch checkpoint and reproduces the same weights.
    """
    with store.session() as session:
        for row in session.scalars(select(Checkpoint).where(Checkpoint.job_key == train_key, Checkpoint.final)):
            path = Path(row.path)
            if path.exists():
                path.rename(path.with_name(path.name + ".corrupt"))
            session.delete(row)
        for key in (train_key, waiting_key):
            session.execute(update(Job).where(Job.key == key)
                            .values(status="pending", error=reason, progress_text="waiting to retrain"))


def verified_final(store: Store, train_key: str) -> Path:
    """The trained model's final checkpoint, after checking that its bytes are the ones recorded."""
    with store.session() as session:
        row = session.scalar(select(Checkpoint).where(Checkpoint.job_key == train_key, Checkpoint.final))
    if row is None:
        raise CheckpointError(f"training job {train_key[:12]} has no final checkpoint in the store")
    path = Path(row.path)
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
