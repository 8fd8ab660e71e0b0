"""Checkpoint records: every checkpoint file the store keeps has a row with its sha256.

A row's path is relative to the store's files (`checkpoints/<key>/epoch-0004.pt`), so that a store moved or copied
elsewhere finds its own files; stores written before that hold absolute paths, which are read as they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import delete, select, update

from smx.db.models import Checkpoint, Job
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


def stored_path(store: Store, path: Path) -> str:
    """How a row records a checkpoint file: relative to the store's files where it lies under them."""
    try:
        return Path(path).relative_to(store.root).as_posix()
    except ValueError:
        return str(path)


def located(store: Store, stored: str) -> Path:
    """The file a row's path names."""
    path = Path(stored)
    return path if path.is_absolute() else store.root / path


def _rows_of(store: Store, path: Path) -> Any:
    """The condition on rows that record `path`, in either form a store may hold."""
    return Checkpoint.path.in_({stored_path(store, path), str(path)})


def record(store: Store, job_key: str, path: Path, epoch: int) -> None:
    with store.session() as session:
        session.execute(delete(Checkpoint).where(Checkpoint.job_key == job_key, _rows_of(store, path)))
        session.add(Checkpoint(job_key=job_key, epoch=epoch, path=stored_path(store, path), sha256=sha256_file(path),
                               size=path.stat().st_size))


def forget(store: Store, path: Path) -> None:
    with store.session() as session:
        session.execute(delete(Checkpoint).where(_rows_of(store, path)))


def is_intact(store: Store, job_key: str, path: Path) -> bool:
    """Whether a checkpoint file still has the bytes recorded for it; True when none were recorded (a run killed
    between writing a checkpoint and recording it), since then nothing can say otherwise."""
    with store.session() as session:
        recorded = session.scalar(select(Checkpoint.sha256).where(Checkpoint.job_key == job_key,
                                                                  _rows_of(store, path)))
    return recorded is None or sha256_file(path) == recorded


def mark_final(store: Store, job_key: str, path: Path, epoch: int) -> None:
    with store.session() as session:
        if session.scalar(select(Checkpoint.id).where(_rows_of(store, path))) is None:
            session.add(Checkpoint(job_key=job_key, epoch=epoch, path=stored_path(store, path),
                                   sha256=sha256_file(path), size=path.stat().st_size))
            session.flush()
        session.execute(update(Checkpoint).where(Checkpoint.job_key == job_key)
                        .values(final=_rows_of(store, path)))


def retrain_after_corruption(store: Store, train_key: str, waiting_key: str, reason: str) -> None:
    """Never use a damaged checkpoint: set it aside, queue its training again and make `waiting_key` wait.

    The damaged file is renamed (kept for inspection) so that resuming training cannot pick it up; training
    then continues from the newest intact epoch checkpoint and reproduces the same weights.
    """
    with store.session() as session:
        for row in session.scalars(select(Checkpoint).where(Checkpoint.job_key == train_key, Checkpoint.final)):
            path = located(store, row.path)
            if path.exists():
                path.rename(path.with_name(path.name + SET_ASIDE_SUFFIX))
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
    path = located(store, row.path)
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
