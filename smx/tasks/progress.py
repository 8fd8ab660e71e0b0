"""Throttled progress reports from a running task into its job row."""

from __future__ import annotations

import time

from smx.db.progress import set_progress
from smx.db.store import Store

# Status and the TUI refresh about once a second: writing more often only adds write transactions to the store.
WRITE_INTERVAL_SECONDS = 1.0


class ProgressReporter:
    """Callable as `progress(fraction, text)`; writes at most once per WRITE_INTERVAL_SECONDS, and always the end."""

    def __init__(self, store: Store, job_key: str) -> None:
        self.store = store
        self.job_key = job_key
        self._last_write = 0.0

    def __call__(self, fraction: float, text: str) -> None:
        now = time.monotonic()
        if now - self._last_write < WRITE_INTERVAL_SECONDS and fraction < 1.0:
            return
        self._last_write = now
        set_progress(self.store, self.job_key, min(max(fraction, 0.0), 1.0), text)

    def resumed(self, fraction: float, text: str) -> None:
        """Say that this attempt starts from `fraction`, done by earlier ones, so that its ETA counts only its own."""
        self._last_write = time.monotonic()
        set_progress(self.store, self.job_key, min(max(fraction, 0.0), 1.0), text, resumed=True)
