"""Throttled progress reports from a running task into its job row."""

from __future__ import annotations

import time

from smx.db.progress import set_progress
from smx.db.store import Store, StoreBusy

# Status and the TUI refresh about once a second: writing more often only adds write transactions to the store.
WRITE_INTERVAL_SECONDS = 1.0


# The exit status of a job's process that stopped because its job was withdrawn from it (see Withdrawn): sysexits'
# EX_TEMPFAIL, which nothing else in a job's process exits with.
WITHDRAWN_EXIT_CODE = 75


class Withdrawn(Exception):
    """The job no longer runs this process's attempt: it was cancelled, or presumed dead and claimed again."""


class ProgressReporter:
    """Callable as `progress(fraction, text)`; writes at most once per WRITE_INTERVAL_SECONDS, and always the end.

    Each write also checks that the job still runs this attempt, and raises Withdrawn when it does not. Its worker
    stops a withdrawn job too, but a worker that is suspended (Ctrl-Z) cannot, and the job, once retried, could then
    run twice at once. A report that finds the store locked by another program is skipped: progress is only shown,
    and the work it reports must go on."""

    def __init__(self, store: Store, job_key: str, attempt: int) -> None:
        self.store = store
        self.job_key = job_key
        self.attempt = attempt
        self._last_write = 0.0

    def __call__(self, fraction: float, text: str) -> None:
        now = time.monotonic()
        if now - self._last_write < WRITE_INTERVAL_SECONDS and fraction < 1.0:
            return
        self._last_write = now
        self._write(fraction, text, resumed=False)

    def resumed(self, fraction: float, text: str) -> None:
        """Say that this attempt starts from `fraction`, done by earlier ones, so that its ETA counts only its own."""
        self._last_write = time.monotonic()
        self._write(fraction, text, resumed=True)

    def _write(self, fraction: float, text: str, resumed: bool) -> None:
        try:
            written = set_progress(self.store, self.job_key, self.attempt, min(max(fraction, 0.0), 1.0), text,
                                   resumed=resumed)
        except StoreBusy:
            return
        if not written:
            raise Withdrawn(f"attempt {self.attempt} of job {self.job_key[:12]} was cancelled or taken over")
