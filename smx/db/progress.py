"""A running job's progress in its row: written by its task (tasks.progress), read by status, the TUI and ETAs."""

from __future__ import annotations

from sqlalchemy import ColumnElement, update

from smx.db.models import Job
from smx.db.store import Store


def while_running(key: str, attempt: int | None = None) -> ColumnElement[bool]:
    """The job while it runs; with `attempt`, only while it runs that attempt (a later one is another worker's)."""
    condition = (Job.key == key) & (Job.status == "running")
    return condition if attempt is None else condition & (Job.attempts == attempt)


def set_progress(store: Store, key: str, attempt: int, fraction: float, text: str, *, resumed: bool = False) -> bool:
    """Record the progress of `attempt` of the job; False, recording nothing, when the job no longer runs that
    attempt: a user cancelled it, or it was presumed dead, put back in the queue and claimed again.
    `resumed`: the attempt starts from `fraction`, the work earlier attempts did (claiming a job sets 0)."""
    started = {"attempt_start_progress": fraction} if resumed else {}
    with store.session() as session:
        # Cut to the column's String(200): PostgreSQL refuses a longer value where SQLite would store it.
        written = session.execute(update(Job).where(while_running(key, attempt))
                                  .values(progress=fraction, progress_text=text[:200], **started))
    return written.rowcount == 1
