"""The Slurm executor: each job of a plan becomes one Slurm job, sent through submitit.

Slurm runs the jobs, in their order: a job waits for its parents' Slurm jobs with `afterok`. The store stays
the record of what is done, as with the local executor: a Slurm job claims its job in the store, runs it with the
same supervision as a local worker (its own process, heartbeats, the store's log file), and closes it. A job
already done is never sent; a job whose Slurm job has gone without finishing it (a node failure, a
cancellation outside smx) is sent again by the next `smx submit`, or by the one following the experiment. A Slurm
job that is preempted or meets its time limit is requeued (submitit's checkpointing), and its job resumes from
its last checkpoint.

Jobs need a store every node reaches: a PostgreSQL URL, with SMX_STORE_FILES on a shared file system (an SQLite
store on a shared file system works for a few nodes, as SQLite's locking allows).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from smx.db.models import Job
from smx.db.store import Store
from smx.errors import UserError
from smx.scheduler import queue

if TYPE_CHECKING:
    from smx.plan import Plan
    from smx.spec import SlurmSection

# Slurm job states in which the job may still run (squeue's long names).
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUED",
               "REQUEUE_FED", "REQUEUE_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT"}
# Aggregate jobs only read certificates and write a few rows: one CPU, no GPU.
LIGHT_KINDS = {"aggregate"}


class SlurmError(UserError):
    pass


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SlurmError("the Slurm executor needs the Python package submitit.\n"
                         "Fix: pip install 'smx[cluster]'.") from None
    return submitit


def _slurm_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"no `{name}` on this machine, so jobs cannot go to Slurm from here.\n"
                         "Fix: run smx on a node of the cluster (a login node), or use --executor local.")
    return path


def check_available() -> None:
    """Refuse early, before anything is queued, where jobs cannot go to Slurm from this machine."""
    require_submitit()
    for command in ("sbatch", "squeue", "scancel"):
        _slurm_command(command)


def live_slurm_jobs(slurm_job_ids: list[str]) -> set[str]:
    """Which of these Slurm jobs may still run (squeue, which needs no accounting database)."""
    if not slurm_job_ids:
        return set()
    answer = subprocess.run([_slurm_command("squeue"), "-h", "-o", "%i %T", "-j", ",".join(slurm_job_ids)],
                            capture_output=True, text=True, timeout=60)
    if answer.returncode != 0:
        if "Invalid job id" in answer.stderr:
            return set()  # every one of them has left squeue's memory
        raise SlurmError(f"squeue failed: {answer.stderr.strip()}.\nFix: check that Slurm answers (`sinfo`).")
    live = set()
    for line in answer.stdout.splitlines():
        slurm_job_id, _, state = line.partition(" ")
        if state.strip() in LIVE_STATES:
            live.add(slurm_job_id.strip())
    return live


def cancel_slurm_jobs(slurm_job_ids: list[str]) -> None:
    if slurm_job_ids:
        subprocess.run([_slurm_command("scancel"), *slurm_job_ids], capture_output=True, text=True, timeout=60)


@dataclass
class SlurmSubmission:
    sent: dict[str, str] = field(default_factory=dict)  # job key → Slurm job id, sent now
    in_slurm: dict[str, str] = field(default_factory=dict)  # job key → Slurm job id, sent before and still live


def send_plan(store: Store, plan: Plan, settings: SlurmSection) -> SlurmSubmission:
    """Send to Slurm every pending job of the plan that no live Slurm job is already there to run."""
    submitit = require_submitit()
    from smx.scheduler.slurm_job import SlurmJob

    with store.read_session() as session:
        rows = {row.key: row for row in session.scalars(select(Job).where(Job.key.in_([j.key for j in plan.jobs])))}
    live = live_slurm_jobs(sorted({row.slurm_job_id for row in rows.values() if row.slurm_job_id}))
    submission = SlurmSubmission()
    in_flight: dict[str, str] = {}  # jobs a later job may wait for with afterok
    executor = submitit.SlurmExecutor(folder=store.root / "slurm" / "%j", max_num_timeout=3)
    for planned in plan.jobs:  # parents come before their children
        row = rows[planned.key]
        if row.status in ("pending", "running") and row.slurm_job_id in live:
            in_flight[planned.key] = submission.in_slurm[planned.key] = row.slurm_job_id
            continue
        if row.status != "pending":
            continue
        waits_for = []
        for parent in planned.parents:
            if rows[parent].status == "done":
                continue
            if parent not in in_flight:
                break  # failed, cancelled, or run by a local worker: this job is sent once its parent is done
            waits_for.append(in_flight[parent])
        else:
            executor.update_parameters(**_sbatch_parameters(settings, planned.kind, planned.name, waits_for))
            try:
                slurm_job = executor.submit(SlurmJob(), planned.key, store.location, str(store.root))
            except submitit.core.utils.FailedJobError as error:
                queue.record_slurm_jobs(store, submission.sent)  # what Slurm took is followed and never sent twice
                raise _refused(planned.name, str(error), settings) from None
            in_flight[planned.key] = submission.sent[planned.key] = str(slurm_job.job_id)
    queue.record_slurm_jobs(store, submission.sent)
    return submission


def _refused(name: str, output: str, settings: SlurmSection) -> SlurmError:
    """sbatch's refusal of a job, with the setting most likely behind it."""
    reason = next((line.strip() for line in output.splitlines() if "sbatch: error" in line), output.strip()[-500:])
    if "gres" in reason.lower() and settings.gpus_per_job:
        fix = (f"this cluster has no GPUs as generic resources for gpus_per_job = {settings.gpus_per_job}: set "
               "executor.slurm.gpus_per_job = 0 (CPU jobs), or a partition that has GPUs")
    else:
        fix = "check executor.slurm (partition, account in sbatch, mem_gb, time_min) against what `sinfo` lists"
    return SlurmError(f"sbatch refused {name}: {reason}\nFix: {fix}. The jobs stay queued in the store; "
                      "`smx submit` again sends them to Slurm.")


def _sbatch_parameters(settings: SlurmSection, kind: str, name: str, waits_for: list[str]) -> dict[str, Any]:
    light = kind in LIGHT_KINDS
    extra: dict[str, Any] = dict(settings.sbatch)
    if waits_for:
        # kill_invalid_depend-less clusters keep a job whose parent failed pending forever; smx cancels those.
        extra["dependency"] = "afterok:" + ":".join(waits_for)
    parameters: dict[str, Any] = {
        "job_name": f"smx-{name}".replace("/", "-"),
        "time": settings.time_min,
        "cpus_per_task": 1 if light else settings.cpus_per_job,
        "ntasks_per_node": 1,
        "setup": list(settings.setup),
        "stderr_to_stdout": True,
        "additional_parameters": extra,
    }
    if settings.partition:
        parameters["partition"] = settings.partition
    if settings.gpus_per_job and not light:
        parameters["gpus_per_node"] = settings.gpus_per_job
    if settings.mem_gb is not None:
        parameters["mem"] = f"{settings.mem_gb:g}GB"
    return parameters


def cancel_orphans(store: Store, plan: Plan) -> list[str]:
    """Cancel the Slurm jobs of pending jobs that wait for a failed or cancelled parent: without Slurm's
    kill_invalid_depend they would stay pending forever, holding a place in the queue."""
    with store.read_session() as session:
        rows = {row.key: row for row in session.scalars(select(Job).where(Job.key.in_([j.key for j in plan.jobs])))}
    orphans = [row.slurm_job_id for planned in plan.jobs if (row := rows[planned.key]).status == "pending"
               and row.slurm_job_id
               and any(rows[parent].status in ("failed", "cancelled") for parent in planned.parents)]
    cancel_slurm_jobs(orphans)
    return orphans


def __getattr__(name: str) -> Any:
    # Slurm jobs sent before SlurmJob moved to slurm_job.py were pickled under this module's name: they still load.
    if name == "SlurmJob":
        from smx.scheduler.slurm_job import SlurmJob

        return SlurmJob
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
