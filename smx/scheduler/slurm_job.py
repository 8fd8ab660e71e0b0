"""What a Slurm job runs on its node. A module of its own, as its class derives from submitit's: everything else of
the Slurm executor (`smx.scheduler.slurm`: cancelling, asking squeue) works where submitit is not installed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from smx.db.store import open_store
from smx.scheduler import queue
from smx.scheduler.slots import Slot, try_lock
from smx.scheduler.slurm import require_submitit
from smx.scheduler.worker import Interrupted, request_stop, run_job


class SlurmJob(require_submitit().helpers.Checkpointable):  # type: ignore[misc]
    """What a Slurm job runs: one job of the store, by key, on the node Slurm chose.

    submitit pickles this object and calls it on the node. As a Checkpointable, on preemption or at its time
    limit it is requeued with the same arguments, and the job resumes from its last checkpoint.
    """

    def __call__(self, key: str, location: str, files_root: str) -> str:
        os.environ["SMX_STORE_FILES"] = files_root
        store = open_store(location, create=False)
        slurm_job_id = os.environ.get("SLURM_JOB_ID", "unknown")
        lock_path = store.locks_dir / f"slurm-{slurm_job_id}.lock"
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or None
        slot = Slot(f"slurm-{slurm_job_id}", gpus, lock_path,
                    cpu_threads=int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        # Held while the job runs, so that a scheduler on this node sees the job alive (queue.recover_abandoned).
        lock = try_lock(lock_path)
        try:
            job = queue.claim(store, key, device=slot.name, slot=Path(lock_path), pid=os.getpid(),
                              slurm_job_id=slurm_job_id)
            if job is None:
                status = queue.job_states(store, [key]).get(key)
                if status in ("done", "cancelled", "running"):
                    return f"not run: the job is {status}"
                raise RuntimeError(f"job {key} is {status} and not ready: a parent is not done")
            # Slurm preempts, requeues or cancels with SIGTERM (then SIGKILL): stop the job, put it back in the queue.
            signal.signal(signal.SIGTERM, request_stop)
            try:
                succeeded = run_job(store, job, slot, requeue_if_terminated=True)
            except Interrupted:
                return "stopped: back in the queue, to resume from its last checkpoint"
            if succeeded is None:
                return "stopped: the job was cancelled, or taken over by another worker"
            if not succeeded:
                raise RuntimeError(f"{job.name} did not succeed; its log: {store.log_path(key)}")
            return "done"
        finally:
            if lock is not None:
                lock.release()
