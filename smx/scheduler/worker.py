"""A worker owns one slot and runs ready jobs there, each in its own subprocess with its output in a log file."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from sqlalchemy import select, update

from smx.db.models import Job, utcnow
from smx.db.store import Store, StoreBusy, file_storage_error, lock_file_errors_reported
from smx.scheduler import queue
from smx.scheduler.slots import Slot, claim_slot, is_free
from smx.tasks.progress import WITHDRAWN_EXIT_CODE

HEARTBEAT_SECONDS = 5.0
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 40
TERMINATE_GRACE_SECONDS = 10.0
# `smx worker`'s exit status when it ran to the end but some of its jobs failed: not 1, which a crash gives.
EXIT_JOBS_FAILED = 3


@dataclass
class WorkerReport:
    slot: str | None
    ran: int = 0  # jobs run to their end (or until they stopped being this worker's)
    failed: int = 0
    interrupted_by: str | None = None  # the signal that stopped the worker, e.g. "SIGINT"
    requeued: str | None = None  # the job it was running then, put back in the queue: "<name> (<key prefix>)"


class Interrupted(Exception):
    """The worker was told to stop (SIGTERM, SIGINT, SIGHUP): its running job goes back to the queue."""


def hangup_stops() -> tuple[signal.Signals, ...]:
    """SIGHUP, among the signals that stop a worker or `smx submit` (a closed terminal sends it), unless this
    process was started to ignore it, as `nohup` starts a command to outlive its terminal."""
    return () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)


# The signal that asked this worker to stop, if one did. Its handler only records it, and the loops that wait check
# it at least every POLL_SECONDS: an exception raised from the handler was lost (printed as "Exception ignored")
# when the signal landed in an at-fork hook while a job's process started, and the worker ran on.
_stop_requested: str | None = None


def request_stop(signum: int, _frame: FrameType | None) -> None:
    """The handler of the signals that stop a worker or a Slurm job. The first request names the stop: a second (a
    terminal's Ctrl-C reaches both `smx submit`, which passes it on, and this worker) changes nothing."""
    global _stop_requested
    _stop_requested = _stop_requested or signal.Signals(signum).name


def _stop_if_requested() -> None:
    if _stop_requested is not None:
        raise Interrupted(_stop_requested)


def _die_with_parent(worker_pid: int) -> None:
    # If the worker is killed (even by SIGKILL), its job process must not run on unsupervised.
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # A worker that died before prctl took effect sends no signal: its job must not start at all.
        if os.getppid() != worker_pid:
            os._exit(1)


def log_tail(path: Path) -> str:
    """The last LOG_TAIL_LINES lines of a job's log, for the error a failed job records."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _open_log(store: Store, job: Job, slot: Slot) -> TextIO:
    """The job's log, opened for appending, with this attempt's header written."""
    log_path = store.log_path(job.key)
    started = f"{utcnow():%Y-%m-%d %H:%M:%S} UTC"
    header = f"{job.name} attempt {job.attempts} on {socket.gethostname()} {slot.name} at {started}"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a")
        try:
            log.write(f"==== {header} ====\n")
            log.flush()
        except OSError:
            log.close()
            raise
    except OSError as error:
        # Nothing ran: the job goes back to the queue, and the worker stops, as every job would meet the same disk.
        with store.session() as session:
            queue.requeue(session, job.key, f"its log {log_path} could not be written", attempt=job.attempts)
        raise file_storage_error(error, log_path, then="start the workers again (`smx worker` or `smx submit`); "
                                 "the job is back in the queue") from error
    return log


def run_job(store: Store, job: Job, slot: Slot, *, requeue_if_terminated: bool = False) -> bool | None:
    """Run one claimed job to its end; returns whether it succeeded, or None when it was stopped because it is no
    longer this worker's (cancelled, or taken over after being presumed dead).

    requeue_if_terminated: a job process ended by SIGTERM goes back to the queue instead of failing. Slurm, when
    it preempts or requeues a job, sends SIGTERM to every process of it, the job's own process perhaps first.
    """
    log_path = store.log_path(job.key)
    command = [sys.executable, "-m", "smx.tasks.run", job.key, "--store", store.location, "--device", slot.device,
               "--attempt", str(job.attempts)]
    environment = {**os.environ, **slot.environment(), "PYTHONUNBUFFERED": "1"}
    process: subprocess.Popen | None = None
    # From the start: a stop request that comes before the job's process is started or recorded must still put
    # the job back, rather than leave it marked running by a worker that is gone.
    try:
        with _open_log(store, job, slot) as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                       stdin=subprocess.DEVNULL,
                                       preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                                       # Its own process group: a Ctrl-C reaches the worker, which stops the job.
                                       process_group=0)
        with store.session() as session:
            session.execute(update(Job).where(Job.key == job.key).values(pid=process.pid, log_path=str(log_path)))
        last_beat = 0.0
        while process.poll() is None:
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                try:
                    with store.session() as session:
                        still_ours = queue.heartbeat(session, job.key, job.attempts)
                except StoreBusy:
                    # Another program holds the store's write lock: the job goes on, and the next beat tells.
                    still_ours = True
                if not still_ours:
                    _stop(process)
                    queue.release(store, job.key, process.pid)
                    return None
            try:
                process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            _stop_if_requested()
    except Interrupted:
        if process is not None:
            _stop(process)
        with store.session() as session:
            queue.requeue(session, job.key, "interrupted; resumes from its last checkpoint", attempt=job.attempts)
        raise
    queue.release(store, job.key, process.pid)
    if process.returncode == WITHDRAWN_EXIT_CODE and not queue.runs_attempt(store, job.key, job.attempts):
        return None
    if process.returncode == 0:
        queue.finish(store, job.key, succeeded=True, attempt=job.attempts)
        return True
    if requeue_if_terminated and process.returncode == -signal.SIGTERM:
        with store.session() as session:
            queue.requeue(session, job.key, "stopped by SIGTERM; resumes from its last checkpoint",
                          attempt=job.attempts)
        raise Interrupted("SIGTERM")
    reason = f"exit code {process.returncode}" if process.returncode > 0 else f"killed by signal {-process.returncode}"
    queue.finish(store, job.key, succeeded=False, error=f"{reason}; log {log_path}\n{log_tail(log_path)}",
                 attempt=job.attempts)
    return False


def _requeue_orphans_of(store: Store, slot: Slot) -> None:
    """Jobs still marked running on the slot we now hold were left by a dead worker."""
    with store.session() as session:
        keys = session.scalars(select(Job.key).where(Job.status == "running", Job.slot == str(slot.lock_path),
                                                     Job.host == socket.gethostname())).all()
        for key in keys:
            queue.requeue(session, key, "its worker stopped; resumed from the last checkpoint")


def _run_on_slot(store: Store, slot: Slot, report: WorkerReport, *, stay: bool) -> None:
    _requeue_orphans_of(store, slot)
    queue.recover_abandoned(store, slot_is_free=is_free)
    while True:
        _stop_if_requested()
        job = queue.claim_next(store, device=slot.name, slot=slot.lock_path, pid=os.getpid())
        if job is not None:
            try:
                succeeded = run_job(store, job, slot)
            except Interrupted:
                report.requeued = f"{job.name} ({job.key[:12]})"
                raise
            report.ran += 1
            if succeeded is False:
                report.failed += 1
            continue
        # Before deciding there is nothing left, take back what dead workers left: nobody else may be about to.
        if queue.recover_abandoned(store, slot_is_free=is_free):
            continue
        if not stay and not queue.has_waitable_work(store):
            return
        time.sleep(POLL_SECONDS)


def run_worker(store: Store, slots: list[Slot], *, stay: bool = False) -> WorkerReport:
    """Claim jobs until none can become ready (or forever with `stay`), or until SIGINT, SIGTERM or SIGHUP (its
    terminal closed), which the report names."""
    global _stop_requested
    report = WorkerReport(slot=None)
    _stop_requested = None

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT, *hangup_stops())}
    try:
        while True:
            with lock_file_errors_reported(store.root):
                claimed = claim_slot(slots)
            if claimed is None:
                break
            slot, lock = claimed
            report.slot = slot.name
            try:
                _run_on_slot(store, slot, report, stay=stay)
            finally:
                lock.release()
            # A submitter may have queued jobs after our last look and found our slot taken, leaving them to us:
            # look once more now that the slot is free. Whoever holds a slot from here on sees them too.
            if not queue.has_ready_work(store):
                break
    except Interrupted as stop:
        report.interrupted_by = str(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A stop asked while the worker was finishing anyway still counts as one.
    report.interrupted_by = report.interrupted_by or _stop_requested
    return report
