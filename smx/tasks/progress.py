"""Throttled progress reports from a running task into its job row."""

from __future__ import annotations

import time

from smx.db.store import Store
from smx.scheduler import queue


class ProgressReporter:
    """Callable as `progress(fraction, text)`; writes at most once per `interval` seconds."""

    def __init__(self, store: Store, job_key: str, interval: float = 1.0) -> None:
        self.store = store
        self.job_key = job_key
        self.interval = interval
        self._last_write = 0.0

    def __call__(self, fraction: float, text: str) -> None:
        now = time.monotonic()
        if now - self._last_write < self.interval and fraction < 1.0:
            return
        self._last_write = now
        queue.set_progress(self.store, self.job_key, min(max(fraction, 0.0), 1.0), text)
