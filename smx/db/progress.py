"""A running job's progress in its row: written by its task (tasks.progress), read by status, the TUI and ETAs."""

from __future__ import annotations

from sqlalchemy import func, update

from smx.db.models import Job
from smx.db.store import Store


def set_progress(store: Store, key: str, fraction: float, text: str) -> None:
    """The first report of an attempt (claiming a job clears attempt_start_progress) also records where it started."""
    # Cut to the column's String(200): PostgreSQL refuses a longer value where SQLite would store it.
    with store.session() as session:
        session.execute(update(Job).where(Job.key == key).values(
            progress=fraction, progress_text=text[:200],
            attempt_start_progress=func.coalesce(Job.attempt_start_progress, fraction)))
