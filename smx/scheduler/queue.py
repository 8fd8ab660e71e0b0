"""The database is the queue: enqueueing a plan, claiming a ready job atomically, and job state changes."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, case, delete, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from smx.db.models import Checkpoint, Experiment, ExperimentJob, Job, JobParent, Meta, utcnow
from smx.db.progress import while_running
from smx.db.queries import experiment_names, name_alike_but_for_case
from smx.db.store import Store
from smx.errors import UserError

if TYPE_CHECKING:
    from smx.plan import Plan

# A running job whose worker has not written a heartbeat for this long is presumed dead, wherever it ran.
STALE_AFTER = timedelta(minutes=5)
# A cancelled job's worker notices within a heartbeat (5 s) and stops the process within 10 s more.
STOP_GRACE = timedelta(seconds=30)
# Results sooner: finish certifying and aggregating trained models before starting new trainings.
KIND_PRIORITY = case({"aggregate": 0, "certify": 1, "analyze": 1, "train": 2}, value=Job.kind, else_=3)
# The error of a pending job cancelled because a submission removed or changed its config and no experiment
# includes it any more; a later submission whose plan has the job queues it again (jobs cancelled by a user stay
# cancelled). Stores hold this text: changing it would leave their jobs cancelled for good.
DROPPED_FROM_EVERY_PLAN = "config removed from the spec: not run unless a spec includes it again"
# A job's runtime (where its data lie; a certify job's rows per pass) is that of the latest submission, unless the
# job is running or done.
RUNTIME_FOLLOWS_SPEC = ("pending", "failed", "cancelled")
# Job keys are sha256 hex digests; a shorter prefix than this would too often name several jobs.
KEY_PREFIX_LENGTH = 4
# Keys a message names when a prefix starts several.
KEY_MATCHES_SHOWN = 3
HEX_DIGITS = frozenset("0123456789abcdef")
# How many jobs `smx cancel` names when it leaves jobs alone that other experiments need.
SHARED_JOBS_SHOWN = 5
# The columns of a failed or cancelled job that is put back in the queue.
_QUEUED_AGAIN: dict[str, Any] = dict(status="pending", error=None, finished_at=None, started_at=None, device=None,
                                     pid=None)


@dataclass
class EnqueueSummary:
    experiment: str
    new: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # Pending jobs of the experiment's previous plan that no experiment includes any more: cancelled, never run.
    dropped: list[str] = field(default_factory=list)
    # Running jobs of its previous plan that no experiment includes any more, by name: left to finish.
    left_running: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.new) + len(self.done) + len(self.waiting) + len(self.failed)


def job_states(store: Store, keys: list[str]) -> dict[str, str]:
    """Status of each key already in the store (keys not present are absent)."""
    with store.session() as session:
        rows = session.execute(select(Job.key, Job.status).where(Job.key.in_(keys))).all()
    return dict(rows)


def to_retrain(store: Store, plan: Plan, states: dict[str, str]) -> set[str]:
    """The plan's done training jobs that will run again: their final checkpoint file is gone (deleted to save
    space, say) and a job of the plan that reads the model is not done, so it queues the training again."""
    done_training = {job.key for job in plan.jobs if job.kind == "train" and states.get(job.key) == "done"}
    needed = {parent for job in plan.jobs if states.get(job.key) != "done" for parent in job.parents} & done_training
    if not needed:
        return set()
    with store.read_session() as session:
        finals = session.execute(select(Checkpoint.job_key, Checkpoint.path)
                                 .where(Checkpoint.job_key.in_(needed), Checkpoint.final)).all()
    kept = {key for key, path in finals if store.located_checkpoint(key, path).is_file()}
    return needed - kept


def experiment_name_problem(session: Session, name: str, spec_path: Path) -> str | None:
    """Why submitting spec_path would silently take over the store's experiment of that name, or None: one made
    of imported logs, or one submitted from another spec file that still exists (a moved spec is fine)."""
    experiment = session.scalar(select(Experiment).where(Experiment.name == name))
    if experiment is None:
        alike = name_alike_but_for_case(name, experiment_names(session))
        if alike is None:
            return None
        return (f"{spec_path}: experiment.name: {name!r} differs from the store's experiment {alike!r} only in case, "
                "and their results folders would be one where file names ignore case (macOS, Windows).\n"
                f"Fix: name the experiment {alike!r} if it is that one, or give it a name of its own.")
    if not experiment.spec_text:
        problem = "holds imported certification logs, which this submission would drop from it"
    elif experiment.spec_path != str(spec_path) and Path(experiment.spec_path).exists():
        problem = f"was submitted from {experiment.spec_path}; this spec would replace its configs with its own"
    else:
        return None
    return (f"{spec_path}: experiment.name: the store's experiment {name!r} {problem}.\n"
            "Fix: give this spec an experiment name of its own.")


def enqueue(store: Store, plan: Plan, spec_path: Path) -> EnqueueSummary:
    """Record the experiment and add the jobs it needs that the store does not have yet.

    Its membership becomes exactly its current plan. Pending jobs that it alone needed before are cancelled (see
    DROPPED_FROM_EVERY_PLAN), so that editing a config out of a spec stops its jobs from running; a later plan
    that includes them again queues them again. Such jobs already running are left to finish, and named.
    """
    summary = EnqueueSummary(plan.experiment)
    planned_keys = [planned.key for planned in plan.jobs]
    with store.session() as session:
        lock_experiment_membership(session)
        problem = experiment_name_problem(session, plan.experiment, spec_path)
        if problem:
            raise UserError(problem)
        leaving = leaving_jobs(session, plan.experiment, planned_keys)
        known = {row.key: row for row in session.execute(
            select(Job.key, Job.status, Job.error, Job.runtime).where(Job.key.in_(planned_keys)))}
        dropped_before = [key for key, row in known.items()
                          if row.status == "cancelled" and row.error == DROPPED_FROM_EVERY_PLAN]
        session.execute(update(Job).where(Job.key.in_(dropped_before), Job.status == "cancelled")
                        .values(**_QUEUED_AGAIN, progress_text=""))
        for planned in plan.jobs:
            row = known.get(planned.key)
            if row is None:
                session.add(Job(key=planned.key, kind=planned.kind, name=planned.name, config=planned.inputs,
                                runtime=planned.runtime, status="pending"))
                session.add_all(JobParent(child_key=planned.key, parent_key=parent) for parent in planned.parents)
                summary.new.append(planned.key)
                continue
            status = "pending" if planned.key in dropped_before else row.status
            if status == "done":
                summary.done.append(planned.key)
            elif status in ("failed", "cancelled"):
                summary.failed.append(planned.key)
            else:
                summary.waiting.append(planned.key)
            if row.runtime != planned.runtime:
                # Another data root, say one fixed after a job failed for want of its files: the latest
                # submission's runtime wins for every job still to run, not for one running or done.
                session.execute(update(Job).where(Job.key == planned.key, Job.status.in_(RUNTIME_FOLLOWS_SPEC))
                                .values(runtime=planned.runtime))
        session.flush()
        experiment = session.scalar(select(Experiment).where(Experiment.name == plan.experiment))
        if experiment is None:
            experiment = Experiment(name=plan.experiment, spec_path=str(spec_path), spec_text=plan.spec_text,
                                    spec_hash=plan.spec_hash, description=plan.description)
            session.add(experiment)
            session.flush()
        else:
            experiment.spec_path, experiment.spec_text = str(spec_path), plan.spec_text
            experiment.spec_hash, experiment.description = plan.spec_hash, plan.description
            experiment.updated_at = utcnow()
        # The experiment's membership is exactly its current plan; jobs of an older plan stay in the store.
        session.execute(delete(ExperimentJob).where(ExperimentJob.experiment_id == experiment.id))
        session.add_all(
            ExperimentJob(experiment_id=experiment.id, job_key=planned.key, config_name=planned.config_name,
                          swept=planned.swept)
            for planned in plan.jobs
        )
        session.flush()
        if leaving:
            summary.dropped = list(session.scalars(
                update(Job).where(Job.key.in_(leaving), Job.status == "pending")
                .values(status="cancelled", finished_at=utcnow(), error=DROPPED_FROM_EVERY_PLAN, progress_text="")
                .returning(Job.key)
                .execution_options(synchronize_session=False)))
            summary.left_running = {job.key: job.name for job in leaving.values() if job.status == "running"}
    return summary


def leaving_jobs(session: Session, experiment: str, planned_keys: list[str]) -> dict[str, Any]:
    """The jobs that making `planned_keys` the experiment's plan takes out of every experiment: those of its
    current plan that the new one leaves out and no other experiment includes. Rows (key, name, status) by key."""
    member, other = aliased(ExperimentJob), aliased(ExperimentJob)
    elsewhere = exists().where(other.job_key == Job.key, other.experiment_id != member.experiment_id)
    rows = session.execute(
        select(Job.key, Job.name, Job.status)
        .join(member, member.job_key == Job.key)
        .join(Experiment, Experiment.id == member.experiment_id)
        .where(Experiment.name == experiment, Job.key.not_in(planned_keys), ~elsewhere))
    return {row.key: row for row in rows}


def lock_experiment_membership(session: Session) -> None:
    """Take turns with other transactions that change which experiments include which jobs, or decide by it
    (enqueue, import, cancel, remove): otherwise a job that one submission drops while another adds it could end up
    cancelled though an experiment needs it. On PostgreSQL this locks the schema-version row till the transaction ends;
    SQLite's BEGIN IMMEDIATE (db/store.py) already lets one writer in at a time and renders no FOR UPDATE."""
    session.execute(select(Meta.key).where(Meta.key == "schema_version").with_for_update())


def _ready_jobs() -> Select[tuple[str]]:
    """Keys of pending jobs whose parents are all done."""
    parent = aliased(Job)
    unfinished_parent = (
        exists()
        .where(JobParent.child_key == Job.key, JobParent.parent_key == parent.key, parent.status != "done")
    )
    return select(Job.key).where(Job.status == "pending", ~unfinished_parent)


def claim_next(store: Store, *, device: str, slot: Path, pid: int) -> Job | None:
    """Atomically take the highest-priority pending job whose parents are all done."""
    ready = (
        _ready_jobs()
        .order_by(KIND_PRIORITY, Job.created_at, Job.key)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with store.session() as session:
        key = session.scalar(update(Job).where(Job.key == ready, Job.status == "pending")
                             .values(**_started(device, slot, pid)).returning(Job.key))
        return session.get(Job, key) if key else None


def _started(device: str, slot: Path, pid: int) -> dict[str, Any]:
    """The columns of a job that a worker has just claimed."""
    now = utcnow()
    return dict(status="running", attempts=Job.attempts + 1, host=socket.gethostname(), pid=pid, device=device,
                slot=str(slot), started_at=now, heartbeat_at=now, finished_at=None, error=None, progress=0.0,
                progress_text="starting", attempt_start_progress=0.0)


def claim(store: Store, key: str, *, device: str, slot: Path, pid: int, slurm_job_id: str) -> Job | None:
    """Take one named job for the Slurm job sent to run it, if the job is ready.

    A job still marked running by this same Slurm job was left by an earlier start of it (Slurm requeued it after
    a preemption, a time limit or a node failure): its process is gone, so the job is taken over, and resumes from
    its last checkpoint as any requeued job does.
    """
    with store.session() as session:
        left_running = session.scalar(select(Job.attempts).where(while_running(key),
                                                                 Job.slurm_job_id == slurm_job_id))
        if left_running is not None:
            requeue(session, key, "its Slurm job was requeued; resumed from the last checkpoint", left_running)
        # Two submissions may have sent the job twice: whichever Slurm job starts first takes it.
        claimed = session.scalar(
            update(Job).where(Job.key == key, Job.status == "pending", Job.key.in_(_ready_jobs()))
            .values(**_started(device, slot, pid), slurm_job_id=slurm_job_id).returning(Job.key))
        return session.get(Job, claimed) if claimed else None


def record_slurm_jobs(store: Store, slurm_job_ids: dict[str, str]) -> None:
    """Note the Slurm job sent to run each (still pending) job."""
    with store.session() as session:
        for key, slurm_job_id in slurm_job_ids.items():
            session.execute(update(Job).where(Job.key == key, Job.status == "pending")
                            .values(slurm_job_id=slurm_job_id))


def has_ready_work(store: Store) -> bool:
    """Whether some pending job could be claimed now."""
    with store.session() as session:
        return bool(session.scalar(select(_ready_jobs().exists())))


def has_waitable_work(store: Store) -> bool:
    """Whether pending jobs could still become ready: something is running that may unblock them."""
    with store.session() as session:
        pending = session.scalar(select(func.count()).where(Job.status == "pending"))
        running = session.scalar(select(func.count()).where(Job.status == "running"))
    return bool(pending) and bool(running)


def heartbeat(session: Session, key: str, attempt: int) -> bool:
    """Record that the worker running `attempt` of the job is alive. False when that attempt should stop: a user
    cancelled the job, or it was presumed dead, put back in the queue and claimed again as a later attempt."""
    beat = session.execute(update(Job).where(while_running(key, attempt)).values(heartbeat_at=utcnow()))
    return beat.rowcount == 1


def runs_attempt(store: Store, key: str, attempt: int) -> bool:
    """Whether the job still runs `attempt`: nobody cancelled it, and it was not claimed again since."""
    with store.read_session() as session:
        return session.scalar(select(func.count()).select_from(Job).where(while_running(key, attempt))) == 1


def finish(store: Store, key: str, *, succeeded: bool, error: str | None = None, attempt: int | None = None) -> None:
    """Close a running job. A job cancelled meanwhile stays cancelled."""
    values = {"status": "done", "progress": 1.0, "progress_text": "done"} if succeeded else {"status": "failed"}
    with store.session() as session:
        session.execute(update(Job).where(while_running(key, attempt))
                        .values(finished_at=utcnow(), error=error, **values))


def requeue(session: Session, key: str, reason: str, attempt: int | None = None) -> None:
    session.execute(update(Job).where(while_running(key, attempt))
                    .values(status="pending", error=reason, pid=None, progress_text="waiting to resume"))


def recover_abandoned(store: Store, *, slot_is_free: Callable[[Path], bool]) -> list[str]:
    """Put back in the queue running jobs whose worker is gone, so they resume from their last checkpoint.

    On this host a job is abandoned when nobody holds its slot lock; elsewhere, when its heartbeat is stale.
    The lock is the better witness: a worker that was suspended (Ctrl-Z, a machine asleep) misses heartbeats
    but still holds its lock, and running its job a second time beside it would be wrong.
    """
    host = socket.gethostname()
    recovered = []
    with store.session() as session:
        running = session.execute(select(Job.key, Job.host, Job.slot, Job.heartbeat_at).where(Job.status == "running"))
        for key, job_host, slot, beat in running.all():
            if job_host == host and slot is not None:
                abandoned = slot_is_free(Path(slot))
            else:
                abandoned = beat is None or utcnow() - beat > STALE_AFTER
            if abandoned:
                requeue(session, key, "its worker stopped; resumed from the last checkpoint")
                recovered.append(key)
    return recovered


@dataclass
class SelectedJobs:
    """The jobs that the targets of `smx cancel` or `smx retry` name."""

    by_key: dict[str, Job] = field(default_factory=dict)  # named by their key or a unique prefix of it
    of_experiments: dict[str, Job] = field(default_factory=dict)  # in the current plan of an experiment named
    experiments: list[str] = field(default_factory=list)  # the experiments named

    @property
    def jobs(self) -> list[Job]:
        return list((self.of_experiments | self.by_key).values())


def select_jobs(session: Session, targets: list[str]) -> SelectedJobs:
    """Jobs named by key (or a unique key prefix of 4+ hexadecimal digits) or by experiment name (its current plan)."""
    selected = SelectedJobs()
    for target in targets:
        experiment = session.scalar(select(Experiment).where(Experiment.name == target))
        if experiment is None:
            job = _job_named_by_key(session, target)
            selected.by_key[job.key] = job
        else:
            selected.experiments.append(experiment.name)
            selected.of_experiments.update((member.job.key, member.job) for member in experiment.members)
    return selected


def keys_behind_names(store: Store, targets: list[str]) -> dict[str, list[str]]:
    """The targets that name an experiment and also start job keys (hexadecimal, 4+ characters), with those keys: the
    experiment is what they name, and a user who meant a job must be told to give more of its key."""
    hidden: dict[str, list[str]] = {}
    with store.read_session() as session:
        for target in targets:
            prefix = target.lower()
            if len(prefix) < KEY_PREFIX_LENGTH or not set(prefix) <= HEX_DIGITS:
                continue
            if session.scalar(select(Experiment.id).where(Experiment.name == target)) is None:
                continue
            keys = _keys_starting_with(session, prefix)
            if keys:
                hidden[target] = keys
    return hidden


def shown_keys(keys: list[str]) -> str:
    """Keys of _keys_starting_with as a message names them: "3f2a9c01d4e7, 3f2a0b77c1e2, …"."""
    return ", ".join(key[:12] for key in keys[:KEY_MATCHES_SHOWN]) + (", …" if len(keys) > KEY_MATCHES_SHOWN else "")


def _keys_starting_with(session: Session, prefix: str) -> list[str]:
    """The first keys that start with `prefix`, one more than a message shows: enough to say there are more."""
    # Compared as text, not with LIKE: no character of the prefix is a wildcard.
    return list(session.scalars(select(Job.key).where(func.substr(Job.key, 1, len(prefix)) == prefix)
                                .order_by(Job.key).limit(KEY_MATCHES_SHOWN + 1)))


def _job_named_by_key(session: Session, target: str) -> Job:
    """The job whose key is `target`, or the only one whose key starts with it; a UserError saying what is wrong
    with a target that names no experiment and no one job."""
    job = session.get(Job, target)
    if job is not None:
        return job
    prefix = target.lower()
    experiments = f"known: {', '.join(experiment_names(session)) or 'none yet'}"
    if not set(prefix) <= HEX_DIGITS:
        raise UserError(f"{target!r} is not an experiment in the store, nor a job key: keys are hexadecimal "
                        f"(0-9, a-f).\nFix: give an experiment name ({experiments}) or a job key from "
                        "`smx status --jobs`.")
    if len(prefix) < KEY_PREFIX_LENGTH:
        raise UserError(f"{target!r} is not an experiment in the store, and job key prefixes need "
                        f"{KEY_PREFIX_LENGTH}+ characters.\nFix: give an experiment name ({experiments}) or at least "
                        f"{KEY_PREFIX_LENGTH} characters of a job key (`smx status --jobs` lists the keys).")
    matches = _keys_starting_with(session, prefix)
    if not matches:
        raise UserError(f"no job key in the store starts with {target!r}, and no experiment is named so.\n"
                        f"Fix: copy the key from `smx status --jobs`, or give an experiment name ({experiments}).")
    if len(matches) > 1:
        raise UserError(f"{target!r} starts several job keys ({shown_keys(matches)}).\nFix: give more characters of "
                        "the key (`smx status --jobs` lists the keys).")
    return session.get(Job, matches[0])


@dataclass
class SharedJob:
    """An unfinished job of an experiment being cancelled that other experiments include too."""

    key: str
    name: str
    experiments: list[str]  # the other experiments that include it


@dataclass
class Cancellation:
    keys: list[str]  # the jobs cancelled
    shared: list[SharedJob] = field(default_factory=list)  # left alone: experiments not named need them too
    slurm_job_ids: list[str] = field(default_factory=list)  # the Slurm jobs sent to run `keys`, scancelled

    @property
    def summary(self) -> str:
        """What `smx cancel` prints and the TUI tells, e.g. 3 job(s) cancelled, and their Slurm jobs 81, 82."""
        slurm = f", and their Slurm jobs {', '.join(self.slurm_job_ids)}" if self.slurm_job_ids else ""
        text = f"{len(self.keys)} job(s) cancelled{slurm}."
        if self.shared:
            shown = self.shared[:SHARED_JOBS_SHOWN]
            jobs = "; ".join(f"{job.name} ({job.key[:12]}, also in {', '.join(job.experiments)})" for job in shown)
            more = f"; and {len(self.shared) - len(shown)} more" if len(self.shared) > len(shown) else ""
            text += (f" {len(self.shared)} job(s) not cancelled, as other experiments need them too: {jobs}{more}. "
                     f"To cancel them all the same, name them by key: `smx cancel "
                     f"{' '.join(job.key[:12] for job in shown)}`.")
        return text


def cancel(store: Store, targets: list[str]) -> Cancellation:
    """Cancel the targets' pending and running jobs. A job of an experiment named that an experiment not named
    also includes is left alone: cancelling one experiment must not stop another's work. Named by its key, it
    is cancelled."""
    with store.session() as session:
        lock_experiment_membership(session)
        selected = select_jobs(session, targets)
        unfinished = {job.key: job for job in selected.jobs if job.status in ("pending", "running")}
        shared: dict[str, list[str]] = {}
        for key, experiment in session.execute(
            select(ExperimentJob.job_key, Experiment.name)
            .join(Experiment, Experiment.id == ExperimentJob.experiment_id)
            .where(ExperimentJob.job_key.in_([key for key in unfinished if key not in selected.by_key]),
                   Experiment.name.not_in(selected.experiments))
            .order_by(Experiment.name)
        ):
            shared.setdefault(key, []).append(experiment)
        keys = [key for key in unfinished if key not in shared]
        # A running job's progress says where it stopped; a pending job's ("retrying", "waiting to resume")
        # would no longer be true.
        progress_text = case((Job.status == "running", Job.progress_text), else_="")
        session.execute(update(Job).where(Job.key.in_(keys), Job.status.in_(("pending", "running")))
                        .values(status="cancelled", finished_at=utcnow(), error="cancelled by the user",
                                progress_text=progress_text))
    return Cancellation(keys, sorted((SharedJob(key, unfinished[key].name, experiments)
                                      for key, experiments in shared.items()), key=lambda job: job.name))


def retry(store: Store, targets: list[str]) -> list[str]:
    """Put failed and cancelled jobs back in the queue; refused while a cancelled job's process may still be
    stopping, since a worker could otherwise start the job beside it."""
    with store.session() as session:
        jobs = [job for job in select_jobs(session, targets).jobs if job.status in ("failed", "cancelled")]
        stopping = [job for job in jobs if may_still_run(job)]
        if stopping:
            names = ", ".join(f"{job.name} ({job.key[:12]})" for job in stopping)
            raise UserError(f"{names}: cancelled while running, and the process may still be stopping.\n"
                            f"Fix: retry in {int(STOP_GRACE.total_seconds())} seconds; nothing was queued again.")
        keys = [job.key for job in jobs]
        session.execute(update(Job).where(Job.key.in_(keys), Job.status.in_(("failed", "cancelled")))
                        .values(**_QUEUED_AGAIN, progress_text="retrying"))
    return keys


def may_still_run(job: Job) -> bool:
    """Whether the process of a job that stopped being running may not have ended yet. Its worker clears `pid`
    once the process has ended; a worker that died cannot, but then its last heartbeat grows old."""
    return job.pid is not None and job.heartbeat_at is not None and utcnow() - job.heartbeat_at < STOP_GRACE


def release(store: Store, key: str, pid: int) -> None:
    """Record that the job's process `pid` has ended."""
    with store.session() as session:
        session.execute(update(Job).where(Job.key == key, Job.pid == pid).values(pid=None))


def cancel_with_slurm_jobs(store: Store, targets: list[str]) -> Cancellation:
    """Cancel the jobs (see `cancel`), and with scancel the Slurm jobs sent to run them."""
    cancellation = cancel(store, targets)
    cancellation.slurm_job_ids = cancel_slurm_jobs_of(store, cancellation.keys)
    return cancellation


def cancel_slurm_jobs_of(store: Store, keys: list[str]) -> list[str]:
    """scancel the Slurm jobs sent to run these cancelled jobs, and return their ids. Left alone, each would wait
    in Slurm's queue for its resources only to find its job cancelled and end."""
    # Imported here: the Slurm executor imports this module.
    from smx.scheduler.slurm import cancel_slurm_jobs

    with store.read_session() as session:
        slurm_job_ids = sorted(set(session.scalars(
            select(Job.slurm_job_id).where(Job.key.in_(keys), Job.slurm_job_id.is_not(None)))))
    cancel_slurm_jobs(slurm_job_ids)
    return slurm_job_ids
