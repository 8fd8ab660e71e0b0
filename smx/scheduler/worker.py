"""A worker owns one slot and runs ready jobs there, each in its own subprocess with its output in a log file."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sqlalchemy import select, update

from smx.db.models import Job, utcnow
from smx.db.store import Store
from smx.scheduler import queue
from smx.scheduler.slots import Slot, claim_slot, is_free

HEARTBEAT_SECONDS = 5.0
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 40
TERMINATE_GRACE_SECONDS = 10.0


@dataclass
class WorkerReport:
    slot: str | None
    ran: int = 0
    failed: int = 0


class _Interrupted(Exception):
    pass


def _die_with_parent() -> None:
    # If the worker is killed (even by SIGKILL), its job process must not run on unsupervised.
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_job(store: Store, job: Job, slot: Slot) -> bool:
    """Run one claimed job to its end; returns whether it succeeded."""
    log_path = store.log_path(job.key)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "smx.tasks.run", job.key, "--store", store.location, "--device", slot.device]
    environment = {**os.environ, **slot.environment(), "PYTHONUNBUFFERED": "1"}
    with log_path.open("a") as log:
        log.write(f"==== {job.name} attempt {job.attempts} on {socket.gethostname()} {slot.name} at {utcnow():%Y-%m-%d %H:%M:%S} UTC ====\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                   stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                   # Its own process group: a Ctrl-C reaches the worker, which stops the job cleanly.
                                   process_group=0)
    with store.session() as session:
        session.execute(update(Job).where(Job.key == job.key).values(pid=process.pid, log_path=str(log_path)))
    last_beat = 0.0
    try:
        while process.poll() is None:
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                with store.session() as session:
                    status = queue.heartbeat(session, job.key)
                if status != "running":
                    _stop(process)
                    return False
            try:
                process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
    except _Interrupted:
        _stop(process)
        with store.session() as session:
            queue.requeue(session, job.key, "interrupted; resumes from its last checkpoint")
        raise
    if process.returncode == 0:
        queue.finish(store, job.key, succeeded=True)
        return True
    reason = f"exit code {process.returncode}" if process.returncode > 0 else f"killed by signal {-process.returncode}"
    queue.finish(store, job.key, succeeded=False, error=f"{reason}; log {log_path}\n{log_tail(log_path)}")
    return False


def _requeue_orphans_of(store: Store, slot: Slot) -> None:
    """Jobs still marked running on the slot we now hold were left by a dead worker."""
    with store.session() as session:
        keys = session.scalars(select(Job.key).where(Job.status == "running", Job.slot == str(slot.lock_path),
                                                     Job.host == socket.gethostname())).all()
        for key in keys:
            queue.requeue(session, key, "its worker stopped; resumed from the last checkpoint")


def run_worker(store: Store, slots: list[Slot], *, stay: bool = False) -> WorkerReport:
    """Claim jobs until none can become ready (or forever with `stay`)."""
    claimed = claim_slot(slots)
    if claimed is None:
        return WorkerReport(slot=None)
    slot, lock = claimed
    report = WorkerReport(slot=slot.name)

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _requeue_orphans_of(store, slot)
        queue.recover_abandoned(store, slot_is_free=is_free)
        while True:
            job = queue.claim_next(store, device=slot.name, slot=slot.lock_path, pid=os.getpid())
            if job is None:
                if not stay and not queue.has_waitable_work(store):
                    break
                time.sleep(POLL_SECONDS)
                queue.recover_abandoned(store, slot_is_free=is_free)
                continue
            report.ran += 1
            if not run_job(store, job, slot):
                report.failed += 1
    except _Interrupted:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()
    return report
