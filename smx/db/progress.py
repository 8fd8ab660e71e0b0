"""A running job's progress in its row: written by its task (tasks.progress), read by status, the TUI and ETAs."""

from __future__ import annotations

from sqlalchemy import update

from smx.db.models import Job
from smx.db.store import Store


def set_progress(store: Store, key: str, fraction: float, text: str) -> None:
    # Cut to the column's String(200): PostgreSQL refuses a longer value where SQLite would store it.
    with store.session() as session:
        session.execute(update(Job).where(Job.key == key).values(progress=fraction, progress_text=text[:200]))
