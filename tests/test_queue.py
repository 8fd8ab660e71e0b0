"""The database queue: atomic claiming by real processes, dependencies, recovery, cancel and retry."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select, update

from smx.db.models import Job, JobParent
from smx.db.progress import set_progress
from smx.errors import UserError
from smx.plan import Plan, build_plan
from smx.scheduler import queue
from smx.scheduler.slots import is_free, parse_gpus, try_lock
from smx.spec import load_spec
from smx.tasks.progress import ProgressReporter, Withdrawn
from tests.specs import tiny_spec


def add_jobs(store, keys: list[str], kind: str = "train", parents: dict[str, list[str]] | None = None) -> None:
    with store.session() as session:
        session.add_all(Job(key=key, kind=kind, name=f"{kind}/{key}", config={}) for key in keys)
        session.flush()
        for child, parent_keys in (parents or {}).items():
            session.add_all(JobParent(child_key=child, parent_key=parent) for parent in parent_keys)


CLAIMER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from smx.db.store import open_store
    from smx.scheduler import queue
    store = open_store(sys.argv[1], create=False)
    claimed = []
    while (job := queue.claim_next(store, device="cpu", slot=Path(sys.argv[2]), pid=0)) is not None:
        claimed.append(job.key)
    Path(sys.argv[3]).write_text("\\n".join(claimed))
""")


def test_two_processes_never_claim_the_same_job(store, tmp_path: Path) -> None:
    keys = [f"job{index:03d}" for index in range(120)]
    add_jobs(store, keys)
    outputs = [tmp_path / f"claimed{index}.txt" for index in range(2)]
    processes = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, store.location, str(tmp_path / f"slot{index}"), str(out)])
        for index, out in enumerate(outputs)
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    claimed = [out.read_text().split() for out in outputs]
    assert sorted(claimed[0] + claimed[1]) == keys
    assert not set(claimed[0]) & set(claimed[1])
    with store.session() as session:
        assert set(session.scalars(select(Job.status))) == {"running"}
        assert set(session.scalars(select(Job.attempts))) == {1}


def test_a_job_waits_for_all_its_parents(store, tmp_path: Path) -> None:
    add_jobs(store, ["train-a", "train-b"])
    add_jobs(store, ["certify-a"], kind="certify", parents={"certify-a": ["train-a", "train-b"]})
    slot = tmp_path / "slot"
    first = queue.claim_next(store, device="cpu", slot=slot, pid=1)
    second = queue.claim_next(store, device="cpu", slot=slot, pid=1)
    assert {first.key, second.key} == {"train-a", "train-b"}
    assert queue.claim_next(store, device="cpu", slot=slot, pid=1) is None
    queue.finish(store, "train-a", succeeded=True)
    assert queue.claim_next(store, device="cpu", slot=slot, pid=1) is None
    assert queue.has_waitable_work(store)
    queue.finish(store, "train-b", succeeded=True)
    assert queue.claim_next(store, device="cpu", slot=slot, pid=1).key == "certify-a"


def test_dependents_of_a_failed_job_wait_and_workers_do_not(store, tmp_path: Path) -> None:
    add_jobs(store, ["train-a"])
    add_jobs(store, ["certify-a"], kind="certify", parents={"certify-a": ["train-a"]})
    queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1)
    queue.finish(store, "train-a", succeeded=False, error="boom")
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1) is None
    assert not queue.has_waitable_work(store)
    with store.session() as session:
        assert session.get(Job, "certify-a").status == "pending"
        assert session.get(Job, "train-a").error == "boom"


def test_a_job_whose_slot_lock_is_free_is_requeued(store, tmp_path: Path) -> None:
    add_jobs(store, ["train-a", "train-b"])
    dead_slot, live_slot = tmp_path / "dead.lock", tmp_path / "live.lock"
    queue.claim_next(store, device="cpu", slot=dead_slot, pid=1)
    queue.claim_next(store, device="cpu", slot=live_slot, pid=1)
    held = try_lock(live_slot)
    try:
        assert queue.recover_abandoned(store, slot_is_free=is_free) == ["train-a"]
    finally:
        held.release()
    with store.session() as session:
        assert session.get(Job, "train-a").status == "pending"
        assert session.get(Job, "train-b").status == "running"


def test_cancel_and_retry(store, tmp_path: Path) -> None:
    add_jobs(store, ["train-a", "train-b"])
    assert queue.cancel(store, ["train-a"]).keys == ["train-a"]
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1).key == "train-b"
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1) is None
    assert queue.retry(store, ["train-a"]) == ["train-a"]
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1).key == "train-a"
    assert set_progress(store, "train-a", 1, 0.5, "epoch 2/4")
    assert queue.retry(store, ["train-b"]) == []  # running, not failed
    assert sorted(queue.cancel(store, ["train-a", "train-b"]).keys) == ["train-a", "train-b"]
    queue.release(store, "train-b", 1)  # its worker stopped the job's process
    assert queue.retry(store, ["train-b"]) == ["train-b"]
    assert queue.cancel(store, ["train-b"]).keys == ["train-b"]
    with store.read_session() as session:
        progress = dict(session.execute(select(Job.key, Job.progress_text)).all())
    assert progress == {"train-a": "epoch 2/4", "train-b": ""}  # where it stopped; no stale "retrying"


def test_the_eta_of_a_resumed_job_counts_only_the_work_of_its_current_attempt(store, tmp_path: Path) -> None:
    from datetime import timedelta

    from smx.db.models import utcnow
    from smx.db.queries import jobs_view

    def eta_after_100_seconds() -> float | None:
        with store.session() as session:
            session.execute(update(Job).values(started_at=utcnow() - timedelta(seconds=100)))
        with store.read_session() as session:
            return jobs_view(session)[0].eta_seconds

    add_jobs(store, ["train-a"])
    queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1)
    assert eta_after_100_seconds() is None  # nothing done yet: no pace to go by
    # A fresh attempt's first report comes after work it did: that work counts (the attempt started at 0).
    set_progress(store, "train-a", 1, 0.6, "epoch 6/10 batch 30/30")
    assert eta_after_100_seconds() == pytest.approx(100 * 0.4 / 0.6, rel=0.01)
    with store.session() as session:
        queue.requeue(session, "train-a", "its worker died")
    queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=2)
    set_progress(store, "train-a", 2, 0.6, "resumed after epoch 6/10", resumed=True)
    set_progress(store, "train-a", 2, 0.7, "epoch 7/10 batch 30/30")
    # 10% in this attempt's 100 s, 30% to go; counting the first attempt's 60% would say 43 s.
    assert eta_after_100_seconds() == pytest.approx(300, rel=0.01)


def test_a_job_cancelled_while_running_is_retried_only_once_its_process_has_ended(store, tmp_path: Path) -> None:
    from datetime import timedelta

    from smx.db.models import utcnow

    add_jobs(store, ["train-a"])
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=4242).key == "train-a"
    assert queue.cancel(store, ["train-a"]).keys == ["train-a"]
    with pytest.raises(UserError, match="may still be stopping"):
        queue.retry(store, ["train-a"])  # its worker has not stopped the process yet
    queue.release(store, "train-a", 4242)  # the worker did
    assert queue.retry(store, ["train-a"]) == ["train-a"]
    with store.read_session() as session:
        job = session.get(Job, "train-a")
        assert (job.status, job.pid, job.started_at, job.device) == ("pending", None, None, None)

    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=4243).key == "train-a"
    progress = ProgressReporter(store, "train-a", attempt=2)
    progress(0.25, "epoch 1/4")
    queue.cancel(store, ["train-a"])
    with store.session() as session:  # a worker that died never releases; its heartbeat grows old instead
        session.execute(update(Job).where(Job.key == "train-a").values(heartbeat_at=utcnow() - timedelta(minutes=1)))
    assert queue.retry(store, ["train-a"]) == ["train-a"]
    # The cancelled attempt's process, if it still runs (its worker suspended, say), stops at its next report
    # rather than run beside the attempt that the retry starts.
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=4244).key == "train-a"
    with pytest.raises(Withdrawn, match="attempt 2 of job train-a was cancelled or taken over"):
        progress(1.0, "done")
    assert not queue.runs_attempt(store, "train-a", 2) and queue.runs_attempt(store, "train-a", 3)
    ProgressReporter(store, "train-a", attempt=3)(1.0, "done")
    with store.read_session() as session:
        assert session.get(Job, "train-a").progress_text == "done"


def test_cpu_slots_share_the_cores_and_hide_gpus(tmp_path: Path, monkeypatch) -> None:
    from smx.scheduler.slots import make_slots

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    slots = make_slots(tmp_path, gpus=[], cpu_jobs=2)
    assert [slot.environment() for slot in slots] == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}] * 2
    gpu_slots = make_slots(tmp_path, gpus=["0", "3"], jobs_per_gpu=2)
    assert [slot.environment() for slot in gpu_slots] == [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in "0033"]
    assert len({slot.lock_path for slot in gpu_slots}) == 4


def test_gpus_option_counts_indices_and_index_zero_alone(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert parse_gpus("auto") == ["0", "1", "2"]
    assert parse_gpus("2") == ["0", "1"]
    assert parse_gpus("none") == []
    assert parse_gpus("0,") == ["0"]
    # A bare 0 reads as "no GPU" and as "GPU 0": it is refused rather than quietly run on the CPU.
    with pytest.raises(UserError, match="(?s)could mean no GPU or GPU 0.*--gpus none.*--gpus 0,"):
        parse_gpus("0")
    assert parse_gpus("1,2") == ["1", "2"]
    for bad in ("4", "one", ",", "0,x", "2,3"):
        with pytest.raises(UserError, match="--gpus"):
            parse_gpus(bad)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match=r"no GPU 0, 1 is visible here \(visible: none\)"):
        parse_gpus("0,1")


def test_a_failing_nvidia_smi_warns_that_jobs_run_on_cpu(tmp_path: Path, monkeypatch, capsys) -> None:
    # The driver is broken: nvidia-smi exists but cannot talk to it, as after a kernel update without a reboot.
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the driver.\"\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert parse_gpus("auto") == []
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1
    assert "nvidia-smi failed (exit status 1: NVIDIA-SMI has failed" in warning
    assert "jobs will run on CPU slots" in warning and "--gpus none" in warning

    def no_answer(command, **options):
        raise subprocess.TimeoutExpired(command, options["timeout"])

    monkeypatch.setattr(subprocess, "run", no_answer)
    assert parse_gpus("auto") == []
    assert "nvidia-smi failed (no answer within 20 s)" in capsys.readouterr().err
    assert parse_gpus("none") == []
    assert capsys.readouterr().err == ""


SIGMAS = {"p": 0.25, "q": 0.5, "r": 0.75}


def sigma_variants(*names: str) -> str:
    """Gaussian variants that differ in sigma (SIGMAS), hence in every job; the same name gives the same jobs."""
    return "".join(f'\n[[variant]]\nname = "{name}"\ntrain.method = "gaussian"\ntrain.sigma = {SIGMAS[name]}\n'
                   for name in names)


def submit_plan(store, tmp_path: Path, name: str, body: str) -> tuple[Plan, queue.EnqueueSummary]:
    """Enqueue a spec as `smx submit` does, without running anything."""
    spec = tmp_path / f"{name}.toml"
    spec.write_text(tiny_spec(name) + body)
    plan = build_plan(load_spec(spec))
    return plan, queue.enqueue(store, plan, spec)


def run_every_ready_job(store, tmp_path: Path) -> list[str]:
    """Claim and finish jobs as workers would until none is ready; the names of those that ran."""
    ran = []
    while (job := queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=1)) is not None:
        queue.finish(store, job.key, succeeded=True)
        ran.append(job.name)
    return ran


def keys_named(plan: Plan, *names: str) -> list[str]:
    return [job.key for job in plan.jobs if job.name in names]


def test_pending_jobs_of_configs_removed_from_a_spec_do_not_run_unless_a_spec_includes_them(
        store, tmp_path: Path) -> None:
    # As after an interrupted `smx submit`: every job of x is pending, and y shares r's training and certification.
    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p", "q", "r"))
    submit_plan(store, tmp_path, "y", sigma_variants("r"))
    _, summary = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    dropped = keys_named(first, "train/q", "certify/q", "aggregate/x")
    assert sorted(summary.dropped) == sorted(dropped)
    assert sorted(run_every_ready_job(store, tmp_path)) == sorted(
        ["train/p", "certify/p", "aggregate/x", "train/r", "certify/r", "aggregate/y"])
    with store.read_session() as session:
        rows = session.scalars(select(Job).where(Job.key.in_(dropped))).all()
        assert {(job.status, job.attempts, job.started_at, job.error) for job in rows} == {
            ("cancelled", 0, None, queue.DROPPED_FROM_EVERY_PLAN)}

    # Putting q back queues its jobs again (the aggregate of p, q and r stays dropped: no spec has it).
    again, summary = submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))
    assert summary.dropped == [] and summary.failed == []
    assert set(keys_named(first, "train/q", "certify/q")) <= set(summary.waiting)
    assert sorted(run_every_ready_job(store, tmp_path)) == ["aggregate/x", "certify/q", "train/q"]
    with store.read_session() as session:
        assert session.get(Job, keys_named(first, "aggregate/x")[0]).status == "cancelled"  # (p, q, r): gone
        assert {job.status for job in session.scalars(select(Job).where(Job.key.in_(job.key for job in again.jobs)))
                } == {"done"}


def test_a_job_a_user_cancelled_stays_cancelled_when_its_config_comes_back(store, tmp_path: Path) -> None:
    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))
    (train_q,) = keys_named(first, "train/q")
    queue.cancel(store, [train_q])
    dropped = submit_plan(store, tmp_path, "x", sigma_variants("p"))[1].dropped
    assert sorted(dropped) == sorted(keys_named(first, "certify/q", "aggregate/x"))
    summary = submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))[1]
    assert train_q in summary.failed and keys_named(first, "certify/q")[0] in summary.waiting


def test_a_running_job_of_a_removed_config_is_left_to_finish_and_named(store, tmp_path: Path) -> None:
    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))
    (train_q,) = keys_named(first, "train/q")
    assert queue.claim(store, train_q, device="slurm-7", slot=tmp_path / "slot", pid=1, slurm_job_id="7") is not None
    summary = submit_plan(store, tmp_path, "x", sigma_variants("p"))[1]
    assert summary.left_running == {train_q: "train/q"}
    assert sorted(summary.dropped) == sorted(keys_named(first, "certify/q", "aggregate/x"))
    assert queue.job_states(store, [train_q]) == {train_q: "running"}


def test_the_latest_data_root_reaches_failed_and_cancelled_jobs_but_not_running_or_done_ones(
        store, tmp_path: Path) -> None:
    def with_root(root: str) -> str:
        return sigma_variants("p", "q").replace("train.method", f'data.root = "{root}"\ntrain.method')

    plan, _ = submit_plan(store, tmp_path, "x", with_root("/old"))
    statuses = {"train/p": "failed", "certify/p": "cancelled", "train/q": "running", "certify/q": "done"}
    with store.session() as session:
        for name, status in statuses.items():
            session.execute(update(Job).where(Job.key.in_(keys_named(plan, name))).values(status=status))
    submit_plan(store, tmp_path, "x", with_root("/new"))
    with store.read_session() as session:
        roots = dict(session.execute(select(Job.name, Job.runtime["data_root"].as_string())
                                     .where(Job.kind != "aggregate")).all())
    assert roots == {"train/p": "/new", "certify/p": "/new", "train/q": "/old", "certify/q": "/old"}


def test_cancelling_an_experiment_leaves_alone_the_jobs_another_experiment_needs(store, tmp_path: Path) -> None:
    x, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    y, _ = submit_plan(store, tmp_path, "y", sigma_variants("p"))
    z, _ = submit_plan(store, tmp_path, "z", sigma_variants("p", "q"))
    (train_p,), (certify_p,) = keys_named(x, "train/p"), keys_named(x, "certify/p")

    cancellation = queue.cancel(store, ["x"])
    assert cancellation.keys == keys_named(x, "aggregate/x")
    assert [(job.key, job.experiments) for job in cancellation.shared] == [(certify_p, ["y", "z"]),
                                                                            (train_p, ["y", "z"])]
    assert cancellation.summary == (
        f"1 job(s) cancelled. 2 job(s) not cancelled, as other experiments need them too: certify/p "
        f"({certify_p[:12]}, also in y, z); train/p ({train_p[:12]}, also in y, z). To cancel them all the same, "
        f"name them by key: `smx cancel {certify_p[:12]} {train_p[:12]}`.")
    with store.read_session() as session:
        assert session.get(Job, train_p).status == session.get(Job, certify_p).status == "pending"
    # x still includes p's jobs, cancelled or not: only naming every experiment that has them cancels them.
    cancellation = queue.cancel(store, ["y", "z"])
    assert sorted(cancellation.keys) == sorted(keys_named(y, "aggregate/y")
                                               + keys_named(z, "train/q", "certify/q", "aggregate/z"))
    assert [(job.name, job.experiments) for job in cancellation.shared] == [("certify/p", ["x"]), ("train/p", ["x"])]
    assert sorted(queue.cancel(store, ["x", "y", "z"]).keys) == sorted([train_p, certify_p])


def test_a_shared_job_named_by_its_key_is_cancelled(store, tmp_path: Path) -> None:
    x, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    submit_plan(store, tmp_path, "y", sigma_variants("p"))
    (train_p,) = keys_named(x, "train/p")
    cancellation = queue.cancel(store, ["x", train_p[:8]])
    assert sorted(cancellation.keys) == sorted(keys_named(x, "aggregate/x", "train/p"))
    assert [job.name for job in cancellation.shared] == ["certify/p"]
    with store.read_session() as session:
        assert dict(session.execute(select(Job.name, Job.status)).all()) == {
            "train/p": "cancelled", "certify/p": "pending", "aggregate/x": "cancelled", "aggregate/y": "pending"}


def test_job_key_prefixes_match_literally_and_bad_ones_are_refused_with_the_right_fix(store) -> None:
    keys = ["b5a5e9dd" + "0" * 56, "cc7f" + "1" * 60, "cc7f" + "2" * 60]
    add_jobs(store, keys)
    refusals = {
        "b5_5": "nor a job key: keys are hexadecimal", "cc7f%": "nor a job key: keys are hexadecimal",
        "": "job key prefixes need 4+ characters", "b5a": "job key prefixes need 4+ characters",
        "abcd": "no job key in the store starts with 'abcd'", "cc7f": "'cc7f' starts several job keys",
    }
    for target, problem in refusals.items():
        for act in (queue.cancel, queue.retry):
            with pytest.raises(UserError, match=re.escape(problem)) as refused:
                act(store, [target])
            assert refused.value.message.count("\nFix: ") == 1
            assert "`smx status --jobs`" in refused.value.message
    with store.read_session() as session:
        assert set(session.scalars(select(Job.status))) == {"pending"}
    assert queue.cancel(store, ["B5A5"]).keys == [keys[0]]  # keys are lowercase; a prefix may not be
    assert queue.retry(store, ["cc7f1"]) == []


def test_the_slurm_jobs_of_dropped_configs_are_scancelled_or_a_warning_says_why_not(
        store, tmp_path: Path, monkeypatch, capsys) -> None:
    from smx.cli import _cancel_dropped_slurm_jobs

    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))
    (certify_q,) = keys_named(first, "certify/q")
    with store.session() as session:  # as after a submission to Slurm that a later one edits
        session.execute(update(Job).where(Job.key == certify_q).values(slurm_job_id="4242"))
    dropped = submit_plan(store, tmp_path, "x", sigma_variants("p"))[1].dropped
    assert certify_q in dropped
    commands, calls = tmp_path / "bin", tmp_path / "scancel-calls"
    commands.mkdir()
    (commands / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (commands / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", str(commands))
    _cancel_dropped_slurm_jobs(store, dropped)
    assert calls.read_text() == "4242\n"
    assert "Their Slurm jobs were cancelled: 4242." in capsys.readouterr().out

    (commands / "scancel").unlink()
    _cancel_dropped_slurm_jobs(store, dropped)
    shown = " ".join(capsys.readouterr().out.split())
    assert "Their Slurm jobs stay queued until they start and end at once: no `scancel` on this machine" in shown


def test_a_done_training_whose_checkpoint_file_is_gone_is_to_retrain_only_while_a_job_needs_it(store, tmp_path) -> None:
    from smx.db.models import Checkpoint

    plan, _ = submit_plan(store, tmp_path, "gone", sigma_variants("p", "q"))
    train = {job.config_name: job.key for job in plan.jobs if job.kind == "train"}
    with store.session() as session:
        session.execute(update(Job).where(Job.key.in_(train.values())).values(status="done"))
        for name, key in train.items():
            path = store.checkpoint_dir(key) / "epoch-0002.pt"
            session.add(Checkpoint(job_key=key, epoch=2, path=str(path), sha256="0" * 64, size=1, final=True))
    (store.checkpoint_dir(train["q"])).mkdir(parents=True)
    (store.checkpoint_dir(train["q"]) / "epoch-0002.pt").write_bytes(b"x")
    states = queue.job_states(store, [job.key for job in plan.jobs])
    assert queue.to_retrain(store, plan, states) == {train["p"]}  # q's file is there
    certified = {job.key: "done" for job in plan.jobs if job.kind != "train"}
    assert queue.to_retrain(store, plan, {**states, **certified}) == set()  # nothing needs p's model any more


def test_a_name_that_is_also_a_key_prefix_names_the_experiment_and_the_keys_behind_it_are_told(
        store, tmp_path: Path) -> None:
    from tests.test_fuzz_cli import run_cli

    plan, _ = submit_plan(store, tmp_path, "first", "")
    train_key = plan.jobs[0].key
    name = train_key[:6]
    submit_plan(store, tmp_path, name, "")  # the same configs: the same jobs, in a second experiment
    assert queue.keys_behind_names(store, [name, "first", train_key[:8]]) == {name: [train_key]}
    code, out, err = run_cli("cancel", name, "--store", store.location)
    assert code == 0, err
    assert (f"note: '{name}' named the experiment {name}; job keys start with it too ({train_key[:12]}): to name a "
            "job, give more characters of its key.") in " ".join(err.split())
