"""Nothing lost: crash-resume, concurrent submitters, integrity and hostile input, proven by fault injection.

Real processes and real signals: workers are SIGKILLed in the middle of training and certification (their job
processes die with them through PR_SET_PDEATHSIG), checkpoint writes fail half-way, checkpoints are corrupted on
disk and two submitters race on one store. Each test then checks what the store holds, not what was printed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import make_url

from smx.db.models import (Aggregate, AnalysisResult, Base, Certificate, CertifiedAccuracy, Checkpoint, Experiment,
                           ExperimentJob, Job, JobParent, TrainMetric)
from smx.db.store import NoStoreYet, Store, open_store
from smx.plan import Plan, build_plan
from smx.scheduler import queue
from smx.scheduler.slots import is_free, try_lock
from smx.science.data import strided_indices
from smx.science.metrics import DEFAULT_RADII
from smx.science.training import load_checkpoint, load_weights
from smx.spec import MAX_CONFIGS, load_spec, parse_spec
from smx.tasks import checkpoints
from smx.tasks.progress import WITHDRAWN_EXIT_CODE
from tests.conftest import smx_command
from tests.servers import fresh_postgres_database
from tests.specs import tiny_spec
from tests.test_fuzz_cli import run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")

T = TypeVar("T")

ATTEMPT_HEADER = re.compile(r"^==== .* attempt (\d+) on ", re.MULTILINE)
TIMEOUT_SECONDS = 300


def spec_text(name: str, *, epochs: int = 2, n: int = 100, max_samples: int = 4, description: str = "") -> str:
    return tiny_spec(name, epochs=epochs, n=n, max_samples=max_samples, description=description, method="gaussian")


def environment() -> dict[str, str]:
    # One thread per job: the runs compare bit for bit, and the tests leave the other core to whoever shares it.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def enqueue(store_dir: Path, spec: str, kinds: tuple[str, ...] = ("train", "certify", "aggregate")) -> Plan:
    """Queue a spec's jobs of these kinds as `smx submit` does, without starting workers: the tests start (and
    kill) those."""
    path = store_dir.parent / f"{parse_spec(spec).experiment.name}.toml"
    path.write_text(spec)
    plan = build_plan(load_spec(path))
    plan = dataclasses.replace(plan, jobs=[job for job in plan.jobs if job.kind in kinds])
    queue.enqueue(open_store(str(store_dir)), plan, path)
    return plan


def key_of(plan: Plan, kind: str) -> str:
    (key,) = [job.key for job in plan.jobs if job.kind == kind]
    return key


# Every scheduler process a test starts, so that a failing test does not leave them running on.
STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    yield
    for process in STARTED:
        if process.poll() is None:
            process.kill()  # a worker's job process dies with it
            process.wait()
    STARTED.clear()


def start(command: list[str], settings: dict[str, str] | None = None, **options: Any) -> subprocess.Popen:
    """The command with the tests' environment, and `settings` added to it."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env={**environment(), **(settings or {})},
                               **options)
    STARTED.append(process)
    return process


def start_worker(location: str | Path, output: Path, slots: int = 1,
                 settings: dict[str, str] | None = None) -> subprocess.Popen:
    command = smx_command("worker", "--store", str(location), "--gpus", "none", "--cpu-jobs", str(slots))
    with output.open("a") as log:
        return start(command, settings, stdout=log, stderr=subprocess.STDOUT)


def finish_worker(worker: subprocess.Popen, output: Path) -> None:
    assert worker.wait(timeout=TIMEOUT_SECONDS) == 0, output.read_text()


def store_if_created(directory: Path) -> Store | None:
    """The store `smx submit` is creating there, once its tables exist (smx.db comes first)."""
    try:
        return open_store(str(directory), create=False)
    except NoStoreYet:
        return None


def wait_until(condition: Callable[[], T], what: str, timeout: float = TIMEOUT_SECONDS) -> T:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def process_status(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc, or None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[1])


def is_running(pid: int) -> bool:
    status = process_status(pid)
    return status is not None and status[0] not in ("Z", "X")  # a zombie has stopped: it only awaits its reaper


def worker_of(job_pid: int, workers: list[subprocess.Popen]) -> subprocess.Popen:
    """The worker whose child the job process `job_pid` is."""
    (worker,) = [worker for worker in workers if worker.pid == process_status(job_pid)[1]]
    return worker


def kill_worker_of(job_pid: int, workers: list[subprocess.Popen]) -> None:
    """SIGKILL the worker that runs the job process `job_pid`, and wait until the job process has died with it."""
    victim = worker_of(job_pid, workers)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    wait_until(lambda: not is_running(job_pid), "the job process to die with its worker", timeout=10)


def job_row(store: Store, key: str) -> Job:
    with store.read_session() as session:
        return session.get(Job, key)


def epoch_metric(store: Store, key: str, epoch: int) -> TrainMetric | None:
    with store.read_session() as session:
        return session.get(TrainMetric, (key, epoch))


def trained_epochs(store: Store, key: str) -> list[int]:
    with store.read_session() as session:
        return list(session.scalars(select(TrainMetric.epoch).where(TrainMetric.job_key == key)
                                    .order_by(TrainMetric.epoch)))


def certificates(store: Store, key: str) -> list[tuple[int, int, float, int, float]]:
    with store.read_session() as session:
        rows = session.scalars(select(Certificate).where(Certificate.job_key == key)
                               .order_by(Certificate.sample_index))
        return [(row.sample_index, row.prediction, row.radius, row.count, row.seconds) for row in rows]


def logged_attempts(store: Store, key: str) -> list[int]:
    """The attempt numbers of the headers the workers wrote into the job's log."""
    path = store.log_path(key)
    return [int(number) for number in ATTEMPT_HEADER.findall(path.read_text())] if path.exists() else []


def final_state(store: Store, train_key: str) -> dict[str, Any]:
    """The final checkpoint's contents: weights, optimizer, scheduler and RNG states."""
    path = checkpoints.verified_final(store, train_key)  # also checks the file against its recorded sha256
    return load_checkpoint(path)


def assert_same_state(actual: Any, expected: Any, where: str = "checkpoint") -> None:
    """Equal value for value, tensors bit for bit. (Two such files still differ in bytes: torch writes a random
    serialization id, and pickle's memo depends on which objects happened to be shared.)"""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_same_state(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (item, expected_item) in enumerate(zip(actual, expected)):
            assert_same_state(item, expected_item, f"{where}[{index}]")
    else:
        assert actual == expected, where


def assert_all_done(store: Store, plan: Plan) -> None:
    assert {job.key: job_row(store, job.key).status for job in plan.jobs} == {job.key: "done" for job in plan.jobs}


@dataclass
class Reference:
    """An uninterrupted run of the default spec: what every interrupted run must end with."""

    store: Store
    train_key: str
    final_state: dict[str, Any]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    plan = enqueue(root / "store", spec_text("reference"), kinds=("train",))
    finish_worker(start_worker(root / "store", root / "worker.out"), root / "worker.out")
    store = open_store(str(root / "store"), create=False)
    assert_all_done(store, plan)
    train_key = key_of(plan, "train")
    return Reference(store, train_key, final_state(store, train_key))


# ---- crash and resume ----


def test_a_worker_killed_in_training_is_noticed_by_a_live_worker_and_training_resumes(
    reference: Reference, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    plan = enqueue(store_dir, spec_text("killed-in-training"))
    store = open_store(str(store_dir), create=False)
    train_key = key_of(plan, "train")
    # Two slots: one worker trains, the other waits for the certification that depends on it.
    outputs = [tmp_path / f"worker{index}.out" for index in range(2)]
    workers = [start_worker(store_dir, output, slots=2) for output in outputs]
    first_epoch = wait_until(lambda: epoch_metric(store, train_key, 1), "the first epoch's checkpoint")
    job_pid = job_row(store, train_key).pid
    victim = worker_of(job_pid, workers)
    (survivor,) = [worker for worker in workers if worker is not victim]
    # Stopped for the two checks below: awake, it may notice the dead worker and requeue the job before they run.
    survivor.send_signal(signal.SIGSTOP)
    kill_worker_of(job_pid, workers)
    assert trained_epochs(store, train_key) == [1], "the worker must die in the middle of training"
    assert job_row(store, train_key).status == "running"  # as the dead worker left it
    survivor.send_signal(signal.SIGCONT)

    finish_worker(survivor, outputs[workers.index(survivor)])
    assert_all_done(store, plan)
    job = job_row(store, train_key)
    assert job.attempts == 2 and logged_attempts(store, train_key) == [1, 2]
    # Epoch 1 was not trained again (its timing would differ), and the result is the uninterrupted one's.
    assert epoch_metric(store, train_key, 1).seconds == first_epoch.seconds
    assert trained_epochs(store, train_key) == [1, 2]
    assert_same_state(final_state(store, train_key), reference.final_state)
    log = store.log_path(train_key).read_text()
    assert re.search(r"^epoch 1/2: loss \d+\.\d{4}, noisy accuracy", log, re.MULTILINE)
    assert re.search(r"^resumed from .*epoch-0*1\S* after epoch 1/2$", log, re.MULTILINE), log


@pytest.mark.parametrize(("stop", "whole_group"),
                         [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGHUP, True)],
                         ids=["sigint", "sigterm", "terminal-closed"])
def test_a_signal_to_smx_submit_stops_its_workers_and_requeues_the_job(tmp_path: Path, stop: int,
                                                                      whole_group: bool) -> None:
    """`kill -INT` or `kill` of the submitting process only (no terminal Ctrl-C reaching the whole process group),
    or the SIGHUP that a closed terminal sends to the whole group: the submitter and its workers."""
    spec = tmp_path / "interrupted.toml"
    spec.write_text(spec_text("interrupted", epochs=50))
    store_dir = tmp_path / "store"
    submit = start(smx_command("submit", str(spec), "--store", str(store_dir), "--gpus", "none"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    store = wait_until(lambda: store_if_created(store_dir), "the store")
    train_key = key_of(build_plan(load_spec(spec)), "train")
    wait_until(lambda: epoch_metric(store, train_key, 1), "the first epoch")
    job_pid = job_row(store, train_key).pid
    if whole_group:
        os.killpg(submit.pid, stop)
    else:
        submit.send_signal(stop)
    _, stderr = submit.communicate(timeout=60)
    assert submit.returncode == 130, stderr
    assert "Traceback" not in stderr
    job = job_row(store, train_key)
    assert job.status == "pending" and "interrupted" in job.error
    assert not is_running(job_pid)
    assert len(trained_epochs(store, train_key)) < 50


def test_smx_submit_started_under_nohup_outlives_its_terminal(tmp_path: Path) -> None:
    spec = tmp_path / "nohup.toml"
    spec.write_text(spec_text("nohup", epochs=50))
    store_dir = tmp_path / "store"
    submit = start(smx_command("submit", str(spec), "--store", str(store_dir), "--gpus", "none"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    store = wait_until(lambda: store_if_created(store_dir), "the store")
    train_key = key_of(build_plan(load_spec(spec)), "train")
    wait_until(lambda: epoch_metric(store, train_key, 1), "the first epoch")
    job_pid = job_row(store, train_key).pid
    os.killpg(submit.pid, signal.SIGHUP)
    time.sleep(3)
    assert submit.poll() is None and is_running(job_pid) and job_row(store, train_key).status == "running"
    submit.send_signal(signal.SIGTERM)
    _, stderr = submit.communicate(timeout=60)
    assert submit.returncode == 130, stderr


def test_smx_submit_whose_worker_is_killed_says_so_and_the_next_submit_resumes_the_job(tmp_path: Path) -> None:
    spec = tmp_path / "worker-killed.toml"
    spec.write_text(spec_text("worker-killed", epochs=4))
    store_dir = tmp_path / "store"
    command = smx_command("submit", str(spec), "--store", str(store_dir), "--gpus", "none")
    submit = start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    store = wait_until(lambda: store_if_created(store_dir), "the store")
    train_key = key_of(build_plan(load_spec(spec)), "train")
    wait_until(lambda: epoch_metric(store, train_key, 1), "the first epoch")
    job_pid = job_row(store, train_key).pid
    worker_pid = process_status(job_pid)[1]
    os.kill(worker_pid, signal.SIGKILL)
    _, stderr = submit.communicate(timeout=60)
    assert submit.returncode == 1
    assert "a worker was killed by SIGKILL (signal 9)" in " ".join(stderr.split())
    wait_until(lambda: not is_running(job_pid), "the job process to follow its worker")

    again = start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = again.communicate(timeout=TIMEOUT_SECONDS)
    assert again.returncode == 0, stderr
    assert "resumed from" in store.log_path(train_key).read_text()
    assert trained_epochs(store, train_key) == [1, 2, 3, 4]


def test_a_certification_killed_midway_resumes_after_its_last_stored_sample(
    reference: Reference, tmp_path: Path
) -> None:
    store = reference.store
    # Long enough (several seconds even on a fast machine) for the task to store a first batch of certificates
    # (it flushes every 2 s) well before its end.
    max_samples = 200
    plan = enqueue(store.root, spec_text("killed-in-certification", n=500, max_samples=max_samples))
    certify_key = key_of(plan, "certify")
    assert job_row(store, reference.train_key).status == "done"  # the trained model is reused
    twin = tmp_path / "twin"  # the same queue, certified without interruption
    # The database through SQLite: closing a plain copy's handle would drop this process's locks on it.
    shutil.copytree(store.root, twin, ignore=shutil.ignore_patterns("smx.db*"))
    with closing(sqlite3.connect(store.root / "smx.db")) as source, closing(sqlite3.connect(twin / "smx.db")) as copy:
        source.backup(copy)
    # Beside the run to be interrupted: both jobs are single-threaded, so on two cores neither waits for the other.
    # Its passes have 64 rows instead of 250 (a GPU's rows per pass come from its free memory): the same noise still.
    uninterrupted_worker = start_worker(twin, tmp_path / "twin.out", settings={"SMX_CERTIFY_BATCH_SIZE": "64"})
    worker = start_worker(store.root, tmp_path / "worker.out")
    wait_until(lambda: certificates(store, certify_key), "the first stored certificates")
    kill_worker_of(job_row(store, certify_key).pid, [worker])
    stored_before_the_kill = certificates(store, certify_key)
    assert 0 < len(stored_before_the_kill) < max_samples, "the worker must die in the middle of certification"

    finish_worker(start_worker(store.root, tmp_path / "worker.out"), tmp_path / "worker.out")
    assert_all_done(store, plan)
    stored = certificates(store, certify_key)
    assert [row[0] for row in stored] == strided_indices(1000, skip=1, max_samples=max_samples)
    assert stored[: len(stored_before_the_kill)] == stored_before_the_kill  # kept, not certified again
    finish_worker(uninterrupted_worker, tmp_path / "twin.out")
    twin_store = open_store(str(twin), create=False)
    assert ("; 64 rows per forward pass (at most 64 from SMX_CERTIFY_BATCH_SIZE, for certify.batch_size 250)"
            in twin_store.log_path(certify_key).read_text())
    # The same noise, so the same certificates: predictions, radii, counts (only the seconds differ).
    assert [row[:4] for row in stored] == [row[:4] for row in certificates(twin_store, certify_key)]
    job = job_row(store, certify_key)
    assert job.attempts == 2 and logged_attempts(store, certify_key) == [1, 2]
    # Its second attempt started where the first stopped: its ETA counted only its own images.
    assert job.attempt_start_progress == pytest.approx(len(stored_before_the_kill) / max_samples)
    log = store.log_path(certify_key).read_text()
    assert f"certifying {max_samples} test images; " in log
    assert f"certifying {max_samples} test images, resuming after {len(stored_before_the_kill)} already" in log
    assert f"{max_samples}/{max_samples} images certified" in log


FAULTY_DISK = textwrap.dedent("""
    # Runs one job as a worker does, on a disk where writing the file named `failing_name` fails after its first
    # kilobyte: "disk-full" raises ENOSPC there as a full disk does, "kill" SIGKILLs the process mid-write.
    import errno, io, os, pathlib, signal, sys
    from smx.tasks import run

    fault, failing_name = sys.argv[1], sys.argv[2]
    opened = pathlib.Path.open

    class FailingFile(io.FileIO):
        def write(self, data):
            room = max(0, 1024 - self.tell())
            if len(data) <= room:
                return super().write(data)
            super().write(bytes(data)[:room])
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_on_failing_disk(self, mode="r", *args, **kwargs):
        if self.name == failing_name and "w" in mode:
            return io.BufferedWriter(FailingFile(self, mode))
        return opened(self, mode, *args, **kwargs)

    pathlib.Path.open = open_on_failing_disk
    sys.exit(run.main(sys.argv[3:]))
""")


def run_job_process(store: Store, key: str, *fault: str) -> subprocess.CompletedProcess:
    """The job's own process, as a worker starts it; with `fault` (kind, file name), on a failing disk."""
    arguments = [key, "--store", store.location, "--device", "cpu"]
    command = [sys.executable, "-c", FAULTY_DISK, *fault, *arguments] if fault else \
        [sys.executable, "-m", "smx.tasks.run", *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=TIMEOUT_SECONDS)


def recorded_checkpoints(store: Store, key: str) -> list[tuple[int, str, str]]:
    with store.read_session() as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_key == key).order_by(Checkpoint.epoch))
        return [(row.epoch, Path(row.path).name, row.sha256) for row in rows]


def claimed_training(tmp_path: Path, name: str) -> tuple[Store, str]:
    """A new store whose train job this test process has claimed, as a worker does before starting its process."""
    plan = enqueue(tmp_path / "store", spec_text(name))
    store = open_store(str(tmp_path / "store"), create=False)
    train_key = key_of(plan, "train")
    assert queue.claim_next(store, device="cpu", slot=tmp_path / "slot.lock", pid=os.getpid()).key == train_key
    return store, train_key


def test_a_checkpoint_write_that_fails_halfway_keeps_the_previous_one_and_training_resumes_exactly(
    reference: Reference, tmp_path: Path
) -> None:
    store, train_key = claimed_training(tmp_path, "failing-disk")
    folder = store.checkpoint_dir(train_key)
    epoch_one = folder / "epoch-0001.pt"

    disk_full = run_job_process(store, train_key, "disk-full", "epoch-0002.pt.tmp")
    assert disk_full.returncode == 2, disk_full.stderr
    assert "Traceback" not in disk_full.stderr
    assert "No space left on device" in disk_full.stderr and str(store.root) in disk_full.stderr
    assert "Fix:" in disk_full.stderr
    assert not (folder / "epoch-0002.pt.tmp").exists()  # the failed write gave its space back
    first_epoch = epoch_metric(store, train_key, 1)
    assert trained_epochs(store, train_key) == [1]
    assert recorded_checkpoints(store, train_key) == [(1, epoch_one.name, checkpoints.sha256_file(epoch_one))]
    assert not (folder / "epoch-0002.pt").exists()

    killed = run_job_process(store, train_key, "kill", "epoch-0002.pt.tmp")
    assert killed.returncode == -signal.SIGKILL
    assert (folder / "epoch-0002.pt.tmp").stat().st_size == 1024  # the half-written file is left behind...
    assert not (folder / "epoch-0002.pt").exists()
    assert recorded_checkpoints(store, train_key) == [(1, epoch_one.name, checkpoints.sha256_file(epoch_one))]
    load_checkpoint(epoch_one)  # ...and the previous checkpoint is whole

    resumed = run_job_process(store, train_key)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(folder.glob("*.tmp"))
    assert epoch_metric(store, train_key, 1).seconds == first_epoch.seconds
    assert_same_state(final_state(store, train_key), reference.final_state)


OUT_OF_GPU_MEMORY = textwrap.dedent("""
    # Runs one job as a worker does, but its second epoch fails as a GPU shared by too many jobs makes it fail.
    import sys
    import torch
    from smx.science import training
    from smx.tasks import run

    epochs_started = []
    train_epoch = training.train_epoch

    def running_out_of_memory(*arguments, **options):
        epochs_started.append(1)
        if len(epochs_started) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
                                         "capacity of 79.19 GiB of which 3.12 MiB is free.\\nSee the documentation.")
        return train_epoch(*arguments, **options)

    training.train_epoch = running_out_of_memory
    sys.exit(run.main(sys.argv[1:]))
""")


def test_a_job_process_whose_job_was_cancelled_stops_by_itself_at_its_first_report(tmp_path: Path) -> None:
    # Its worker would stop it, but a suspended worker cannot; retried, the job would then run twice at once.
    store, train_key = claimed_training(tmp_path, "withdrawn")
    assert queue.cancel(store, [train_key]).keys == [train_key]
    stopped = run_job_process(store, train_key)
    assert stopped.returncode == WITHDRAWN_EXIT_CODE, stopped.stderr
    assert f"stopped: attempt 1 of job {train_key[:12]} was cancelled or taken over" in stopped.stdout
    assert trained_epochs(store, train_key) == []
    with store.read_session() as session:
        assert session.get(Job, train_key).status == "cancelled"


def test_a_job_that_runs_out_of_gpu_memory_says_what_to_do_and_resumes_from_its_last_checkpoint(
    reference: Reference, tmp_path: Path
) -> None:
    store, train_key = claimed_training(tmp_path, "out-of-gpu-memory")
    arguments = [train_key, "--store", store.location, "--device", "cpu"]
    failed = subprocess.run([sys.executable, "-c", OUT_OF_GPU_MEMORY, *arguments], capture_output=True, text=True,
                            env=environment(), timeout=TIMEOUT_SECONDS)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[0] == (
        "error: the job ran out of memory on cpu: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
        "capacity of 79.19 GiB of which 3.12 MiB is free.")
    assert "Fix: run fewer jobs on this GPU at once (`--jobs-per-gpu`" in failed.stderr
    assert f"`smx retry {train_key[:12]}`: the job resumes where it stopped" in failed.stderr
    assert trained_epochs(store, train_key) == [1]

    resumed = run_job_process(store, train_key)
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1/2" in resumed.stdout
    assert_same_state(final_state(store, train_key), reference.final_state)


def test_out_of_gpu_memory_names_the_gpu_as_the_machine_numbers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from smx.tasks.run import _resource_problem

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # a worker's job on GPU 3 sees it as cuda:0
    wrapped = RuntimeError("compiled step failed")
    wrapped.__cause__ = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
    problem = _resource_problem(wrapped, "store", "cuda", "ab" * 32)
    assert problem.message.startswith("the job ran out of memory on GPU 3: CUDA out of memory. Tried to allocate")
    assert _resource_problem(RuntimeError("a bug"), "store", "cuda", "ab" * 32) is None


KILLED_BEFORE_RECORDING = textwrap.dedent("""
    # Runs one job as a worker does, but SIGKILLs it once its first checkpoint is on disk, before the store records it.
    import os, signal, sys
    from smx.tasks import checkpoints, run

    checkpoints.record = lambda *arguments: os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(run.main(sys.argv[1:]))
""")


def test_a_kill_between_a_checkpoint_and_its_rows_loses_neither_the_rows_nor_the_epoch(
    reference: Reference, tmp_path: Path
) -> None:
    store, train_key = claimed_training(tmp_path, "killed-before-recording")
    arguments = [train_key, "--store", store.location, "--device", "cpu"]
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RECORDING, *arguments], capture_output=True,
                            text=True, env=environment(), timeout=TIMEOUT_SECONDS)
    assert killed.returncode == -signal.SIGKILL
    epoch_one = store.checkpoint_dir(train_key) / "epoch-0001.pt"
    assert epoch_one.exists()
    assert recorded_checkpoints(store, train_key) == [] and trained_epochs(store, train_key) == []

    resumed = run_job_process(store, train_key)
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1/2" in resumed.stdout
    assert trained_epochs(store, train_key) == [1, 2]  # epoch 1's row, from the metrics beside its checkpoint
    files = sorted(store.checkpoint_dir(train_key).glob("*.pt"))
    assert recorded_checkpoints(store, train_key) == [
        (epoch, path.name, checkpoints.sha256_file(path)) for epoch, path in enumerate(files, start=1)]
    assert_same_state(final_state(store, train_key), reference.final_state)


def test_a_corrupted_checkpoint_is_never_used_and_its_training_is_redone_from_the_previous_epoch(
    reference: Reference, tmp_path: Path
) -> None:
    store = reference.store
    final = checkpoints.verified_final(store, reference.train_key)
    first_epoch = epoch_metric(store, reference.train_key, 1)
    training_attempts = job_row(store, reference.train_key).attempts
    # Flipped bytes in the middle of the file: it may well still load, with wrong weights. Only the sha256 tells.
    damaged = bytearray(final.read_bytes())
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(byte ^ 0xFF for byte in damaged[middle:middle + 64])
    final.write_bytes(damaged)

    plan = enqueue(store.root, spec_text("after-corruption", max_samples=3))
    certify_key = key_of(plan, "certify")
    finish_worker(start_worker(store.root, tmp_path / "worker.out"), tmp_path / "worker.out")
    assert_all_done(store, plan)
    assert "does not match its recorded sha256" in store.log_path(certify_key).read_text()
    assert final.with_name(final.name + ".corrupt").read_bytes() == damaged  # set aside for inspection
    training = job_row(store, reference.train_key)
    assert training.attempts == training_attempts + 1
    assert epoch_metric(store, reference.train_key, 1).seconds == first_epoch.seconds  # resumed after epoch 1
    assert_same_state(final_state(store, reference.train_key), reference.final_state)
    assert len(certificates(store, certify_key)) == 3


def test_a_model_trained_again_takes_the_results_its_unfinished_jobs_stored_with_it(store: Store) -> None:
    # Retraining after a damaged checkpoint reproduces the weights on a CPU, not on a GPU: a job must not mix
    # results of the two models. Finished results stay, and so do those of a job still running on the old model.
    states = {"waiting": "running", "done": "done", "other-running": "running", "cancelled": "cancelled",
              "analyze-failed": "failed"}
    with store.session() as session:
        session.add(Job(key="train", kind="train", name="train/a", config={}, status="done", attempts=1))
        for key, status in states.items():
            kind = "analyze" if key.startswith("analyze") else "certify"
            session.add(Job(key=key, kind=kind, name=f"{kind}/a", config={}, status=status, attempts=1))
        session.flush()
        for key in states:
            session.add(JobParent(child_key=key, parent_key="train"))
            if not key.startswith("analyze"):
                session.add(Certificate(job_key=key, sample_index=0, label=1, prediction=1, radius=0.5, correct=1,
                                        pa_lower=0.9, count=90, seconds=0.1))
            else:
                session.add(AnalysisResult(job_key=key, analysis="mixing_ratio", sample_index=0, label=1,
                                           distance=1.0, mixing_ratio=0.5))
    checkpoints.retrain_after_corruption(store, "train", "waiting", "checkpoint x is missing")
    with store.read_session() as session:
        kept = set(session.scalars(select(Certificate.job_key))) | set(session.scalars(select(AnalysisResult.job_key)))
        statuses = dict(session.execute(select(Job.key, Job.status)).all())
    assert kept == {"done", "other-running"}
    assert statuses == {**states, "train": "pending", "waiting": "pending"}


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_a_damaged_final_checkpoint_fails_verification(store: Store, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "epoch-0001.pt"
    torch.save({"model": {"weight": torch.arange(1000.0)}}, path)
    with store.session() as session:
        session.add(Job(key="train-a", kind="train", name="train/a", config={}))
    checkpoints.mark_final(store, "train-a", path, epoch=1)
    assert checkpoints.verified_final(store, "train-a") == path
    if damage == "flipped":
        data = bytearray(path.read_bytes())
        data[-100] ^= 0x01
        path.write_bytes(data)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.unlink()
    with pytest.raises(checkpoints.CheckpointError, match=str(path)):
        checkpoints.verified_final(store, "train-a")


def test_a_moved_or_copied_store_reads_its_own_checkpoints(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    path = store.checkpoint_dir("train-a") / "epoch-0001.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {"weight": torch.arange(10.0)}}, path)
    with store.session() as session:
        session.add(Job(key="train-a", kind="train", name="train/a", config={}))
    checkpoints.record(store, "train-a", path, epoch=1)
    checkpoints.mark_final(store, "train-a", path, epoch=1)
    assert checkpoints.is_intact(store, "train-a", path)
    assert checkpoints.is_intact(store, "train-a", path.with_name("epoch-0002.pt"))  # nothing recorded to doubt
    store.engine.dispose()
    shutil.copytree(tmp_path / "store", tmp_path / "copy")
    (tmp_path / "store").rename(tmp_path / "moved")
    moved = open_store(str(tmp_path / "moved"))
    moved_path = tmp_path / "moved" / "checkpoints" / "train-a" / "epoch-0001.pt"
    assert checkpoints.verified_final(moved, "train-a") == moved_path
    # A copy whose own file is damaged says so, though the original's is intact.
    copy = open_store(str(tmp_path / "copy"))
    copied_path = tmp_path / "copy" / "checkpoints" / "train-a" / "epoch-0001.pt"
    copied_path.write_bytes(copied_path.read_bytes()[:-1] + b"x")
    assert not checkpoints.is_intact(copy, "train-a", copied_path)
    with pytest.raises(checkpoints.CheckpointError, match=f"{copied_path} does not match its recorded sha256"):
        checkpoints.verified_final(copy, "train-a")
    checkpoints.forget(moved, "train-a", moved_path)
    with moved.session() as session:
        assert session.scalars(select(Checkpoint.path)).all() == []


# ---- concurrency ----


OVERLAP_A = spec_text("overlap-a", epochs=1, max_samples=3) + '\n[[variant]]\nname = "shared"\n'
OVERLAP_B = spec_text("overlap-b", epochs=1, max_samples=3) + textwrap.dedent("""
    [[variant]]
    name = "shared"

    [[variant]]
    name = "narrow"
    train.sigma = 0.25
""")


def test_two_submitters_on_overlapping_specs_run_every_job_exactly_once(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    specs = [tmp_path / "a.toml", tmp_path / "b.toml"]
    specs[0].write_text(OVERLAP_A)
    specs[1].write_text(OVERLAP_B)
    # Two schedulers on one store, each wanting both CPU slots.
    submitters = [
        start(smx_command("submit", str(spec), "--store", str(store_dir), "--gpus", "none", "--cpu-jobs", "2"),
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for spec in specs
    ]
    # Each submitter follows its own experiment to the end, whichever scheduler's workers ran its jobs.
    for submitter, jobs in zip(submitters, (3, 5)):
        out, err = submitter.communicate(timeout=TIMEOUT_SECONDS)
        assert submitter.returncode == 0, out + err
        assert f"all {jobs} jobs done" in out, out + err

    store = open_store(str(store_dir), create=False)
    plans = [build_plan(load_spec(spec)) for spec in specs]
    keys = {job.key for plan in plans for job in plan.jobs}
    assert len(keys) == 6  # the shared config's training and certification are one job each
    with store.read_session() as session:
        jobs = session.scalars(select(Job)).all()
        aggregate_rows, certificate_rows, epochs = (
            dict(session.execute(select(table.job_key, func.count()).group_by(table.job_key)).all())
            for table in (Aggregate, Certificate, TrainMetric)
        )
    assert {job.key for job in jobs} == keys
    assert {(job.status, job.attempts) for job in jobs} == {("done", 1)}
    for job in jobs:
        assert logged_attempts(store, job.key) == [1], job.name
    assert aggregate_rows == {key_of(plans[0], "aggregate"): 1, key_of(plans[1], "aggregate"): 2}
    assert set(certificate_rows.values()) == {3} and len(certificate_rows) == 2
    assert set(epochs.values()) == {1} and len(epochs) == 2


def add_soak_jobs(store: Store, aggregates: int, rng: random.Random) -> dict[str, list[str]]:
    """Certify jobs already done (a few certificates each), and torch-free aggregate jobs that summarise them.

    Returns each aggregate's config names. Each aggregate is the plan of an experiment of its own, hence has its own
    results folder.
    """
    certify_keys = [f"certify-{index}" for index in range(6)]
    configs_of = {}
    with store.session() as session:
        session.add_all(Job(key=key, kind="certify", name=f"certify/{key}", config={}, status="done", attempts=1)
                        for key in certify_keys)
        session.flush()
        for key in certify_keys:
            session.add_all(Certificate(job_key=key, sample_index=index, label=index % 10, prediction=index % 10,
                                        radius=0.1 * index, correct=1, seconds=0.01) for index in range(3))
        session.flush()
        for index in range(aggregates):
            key, chosen = f"aggregate-{index:03d}", rng.sample(certify_keys, rng.randint(1, 3))
            configs = [{"name": f"config-{certify_key}", "certify_key": certify_key, "method": "gaussian",
                        "sigma": 0.5, "swept": {}} for certify_key in chosen]
            session.add(Job(key=key, kind="aggregate", name=f"aggregate/soak-{index:03d}",
                            config={"experiment": f"soak-{index:03d}", "radii": [0.5], "configs": configs}))
            experiment = Experiment(name=f"soak-{index:03d}", spec_path=f"soak-{index:03d}.toml", spec_text="",
                                    spec_hash=f"{index:064d}")
            session.add(experiment)
            session.flush()
            session.add_all(JobParent(child_key=key, parent_key=parent) for parent in chosen)
            session.add(ExperimentJob(experiment_id=experiment.id, job_key=key))
            configs_of[key] = [config["name"] for config in configs]
    return configs_of


def test_soak_random_worker_kills_lose_and_repeat_nothing(store: Store, tmp_path: Path) -> None:
    rng = random.Random(7)
    configs_of = add_soak_jobs(store, aggregates=80, rng=rng)
    output = tmp_path / "workers.out"
    workers = [start_worker(store.location, output, slots=4) for _ in range(4)]
    kills = 0
    while kills < 10 and any(worker.poll() is None for worker in workers):
        time.sleep(rng.uniform(0.3, 1.5))
        alive = [worker for worker in workers if worker.poll() is None]
        if not alive:
            break
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        workers[workers.index(victim)] = start_worker(store.location, output, slots=4)
    for worker in workers:
        assert worker.wait(timeout=TIMEOUT_SECONDS) == 0, output.read_text()

    with store.read_session() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "aggregate")).all()
        summaries = session.execute(select(Aggregate.job_key, Aggregate.config_name, Aggregate.id)).all()
        radii_per_summary = dict(session.execute(select(CertifiedAccuracy.aggregate_id, func.count())
                                                 .group_by(CertifiedAccuracy.aggregate_id)).all())
        certify_states = set(session.execute(select(Job.status, Job.attempts).where(Job.kind == "certify")))
    assert {job.status for job in jobs} == {"done"}
    assert certify_states == {("done", 1)}
    # One summary per config of each aggregate, each with every radius once: no run doubled a set.
    assert sorted((key, name) for key, name, _ in summaries) == sorted(
        (key, name) for key, names in configs_of.items() for name in names)
    assert set(radii_per_summary.values()) == {len(DEFAULT_RADII)} and len(radii_per_summary) == len(summaries)
    # A kill costs at most the one attempt its worker was running; every attempt that started wrote one header.
    repeats = sum(job.attempts - 1 for job in jobs)
    assert 0 < repeats <= kills
    for job in jobs:
        headers = logged_attempts(store, job.key)
        assert headers == sorted(set(headers)) and headers[-1] == job.attempts, (job.key, headers, job.attempts)
        results = store.root / "results" / job.config["experiment"]
        assert sorted(path.stem for path in results.iterdir()) == sorted(configs_of[job.key])


def test_a_stale_heartbeat_does_not_requeue_a_job_whose_worker_holds_its_slot(store: Store, tmp_path: Path) -> None:
    # A worker suspended for a while (Ctrl-Z, a laptop asleep) misses heartbeats, but on this host its lock says
    # it is alive: requeueing its job would run it twice at once. Elsewhere, only the heartbeat can tell.
    slot = tmp_path / "live.lock"
    held = try_lock(slot)
    try:
        for key, claimed_on in (("here", slot), ("elsewhere", tmp_path / "other-host.lock")):
            with store.session() as session:
                session.add(Job(key=key, kind="train", name=f"train/{key}", config={}))
            assert queue.claim_next(store, device="cpu", slot=claimed_on, pid=os.getpid()).key == key
        long_ago = job_row(store, "here").heartbeat_at - queue.STALE_AFTER - timedelta(minutes=1)
        with store.session() as session:
            session.execute(update(Job).values(heartbeat_at=long_ago))
            session.execute(update(Job).where(Job.key == "elsewhere").values(host="another-host"))
        assert queue.recover_abandoned(store, slot_is_free=is_free) == ["elsewhere"]
    finally:
        held.release()
    assert job_row(store, "here").status == "running"


def test_a_worker_whose_job_was_taken_over_neither_beats_for_it_nor_closes_it(store: Store, tmp_path: Path) -> None:
    with store.session() as session:
        session.add(Job(key="train-a", kind="train", name="train/a", config={}))
    first = queue.claim_next(store, device="cpu", slot=tmp_path / "a.lock", pid=1)
    with store.session() as session:
        queue.requeue(session, "train-a", "its heartbeat went stale")
    second = queue.claim_next(store, device="cpu", slot=tmp_path / "b.lock", pid=2)
    assert (first.attempts, second.attempts) == (1, 2)
    with store.session() as session:
        assert not queue.heartbeat(session, "train-a", first.attempts)
        assert queue.heartbeat(session, "train-a", second.attempts)
    queue.finish(store, "train-a", succeeded=False, error="the old attempt's process was stopped", attempt=1)
    assert job_row(store, "train-a").status == "running"
    queue.finish(store, "train-a", succeeded=True, attempt=2)
    assert job_row(store, "train-a").status == "done"


# ---- storage failures ----


def assert_user_error(result: tuple[int, str, str], *expected: str) -> None:
    code, out, err = result
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "error:" in err
    for text in expected:
        assert text in err, (text, err)


def test_an_unwritable_store_location_is_a_clear_error(tmp_path: Path) -> None:
    # Permissions do not stop root; a path below a regular file cannot be created by anyone.
    regular_file = tmp_path / "a-file"
    regular_file.write_text("")
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text("unwritable"))
    for command in (["submit", str(spec)], ["worker"]):
        store = regular_file / "store"
        assert_user_error(run_cli(*command, "--store", str(store), "--gpus", "none"), str(store), "Fix:")
    assert regular_file.read_text() == ""


def test_a_store_named_by_its_database_file_or_a_wrong_login_gets_the_right_fix(tmp_path: Path) -> None:
    database = tmp_path / "store" / "smx.db"
    open_store(str(database.parent)).engine.dispose()
    assert_user_error(run_cli("status", "--store", str(database)), f"{database} is a file",
                      f"--store {database.parent}")
    with fresh_postgres_database() as url:
        wrong_password = make_url(url).set(password="not-the-password").render_as_string(hide_password=False)
        code, _, err = run_cli("status", "--store", wrong_password)
        assert code == 2 and "Traceback" not in err
        assert "the user name and password" in " ".join(err.split()) and "permissions" not in err


def test_a_store_database_damaged_inside_is_a_clear_error(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = open_store(str(store_dir))
    with store.session() as session:  # enough rows for the jobs table to span many pages
        session.add_all(Job(key=f"{number:064d}", kind="train", name=f"train/{number}", config={"x": "y" * 100})
                        for number in range(2000))
    store.engine.dispose()
    # Pages of the jobs table overwritten, the file's header left as it was: the store opens, its rows do not read.
    database = store_dir / "smx.db"
    size = database.stat().st_size
    with database.open("r+b") as file:
        for page in range(size // 4096 // 2, size // 4096):
            file.seek(page * 4096)
            file.write(bytes([page % 251]) * 4096)
    assert_user_error(run_cli("status", "--store", str(store_dir), "--jobs"),
                      f"the store database {database} is damaged", "move it away")


def test_an_io_error_on_a_full_disk_says_to_free_space_not_to_check_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from smx.db import store as store_module

    store = open_store(str(tmp_path / "store"))
    # What SQLite answers when it cannot even create its shared-memory file on a full disk.
    disk_io_error = sqlite3.OperationalError("disk I/O error")
    disk_io_error.sqlite_errorcode = 10 | (13 << 8)  # SQLITE_IOERR_SHMSIZE
    error = OperationalError("SELECT 1", {}, disk_io_error)
    assert "check that this user may read" in store_module._sqlite_open_error(store, error).message
    monkeypatch.setattr(store_module, "_nearly_full", lambda path: True)
    message = store_module._sqlite_open_error(store, error).message
    assert "the disk is full" in message and "free some space on the disk" in message


def test_a_full_store_database_is_a_clear_error_and_nothing_is_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smx.db import store as store_module

    store_dir = tmp_path / "store"
    open_store(str(store_dir)).engine.dispose()
    spec = tmp_path / "spec.toml"
    # A long description needs new database pages, which a full disk cannot give.
    spec.write_text(spec_text("full-disk", description="x" * 50_000))
    make_engine = store_module._sqlite_engine

    def engine_on_a_full_disk(url: str):  # type: ignore[no-untyped-def]
        engine = make_engine(url)
        # SQLite's own limit on the file's size: past it, writes fail with SQLITE_FULL as on a full disk.
        event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA max_page_count = 1"))
        return engine

    monkeypatch.setattr(store_module, "_sqlite_engine", engine_on_a_full_disk)
    assert_user_error(run_cli("submit", str(spec), "--store", str(store_dir), "--gpus", "none"),
                      str(store_dir / "smx.db"), "full", "Fix:")
    monkeypatch.undo()
    database = sqlite3.connect(store_dir / "smx.db")
    try:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert database.execute("SELECT count(*) FROM jobs").fetchall() == [(0,)]
        assert database.execute("SELECT count(*) FROM experiments").fetchall() == [(0,)]
    finally:
        database.close()


def test_a_job_log_that_cannot_be_written_stops_the_worker_clearly_and_requeues_the_job(
    tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    plan = enqueue(store_dir, spec_text("unwritable-log"))
    store = open_store(str(store_dir), create=False)
    train_key = key_of(plan, "train")
    store.log_path(train_key).mkdir(parents=True)  # where the log file should be: as unwritable as it gets
    output = tmp_path / "worker.out"
    worker = start_worker(store_dir, output)
    assert worker.wait(timeout=TIMEOUT_SECONDS) == 2
    message = output.read_text()
    assert "Traceback" not in message and str(store.log_path(train_key)) in message and "Fix:" in message
    assert job_row(store, train_key).status == "pending"


# ---- hostile input ----


HOSTILE_QUERIES = [
    "INSERT INTO jobs (key, kind, name, config) VALUES ('x', 'train', 'x', '{}')",
    "UPDATE jobs SET status = 'pending'",
    "DELETE FROM certificates",
    "DROP TABLE jobs",
    "DROP VIEW results",
    "CREATE TABLE evil (x)",
    "ATTACH DATABASE '{attached}' AS evil",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "SELECT 1; DELETE FROM jobs",
    "SELECT key FROM jobs; DROP TABLE jobs",
    "WITH gone AS (DELETE FROM jobs RETURNING *) SELECT * FROM gone",
    "REPLACE INTO meta (key, value) VALUES ('schema_version', '99')",
    "VACUUM INTO '{attached}'",
    "SELECT load_extension('{attached}')",
    # What a server store's SQL could try: leave the read-only transaction, or write files on the server.
    "COMMIT; DELETE FROM jobs",
    "ROLLBACK; DROP TABLE jobs",
    "SET TRANSACTION READ WRITE; DELETE FROM jobs",
    "SELECT lo_import('/etc/hostname')",
    "COPY jobs TO '{attached}'",
    "SELECT set_config('default_transaction_read_only', 'off', false); DELETE FROM jobs",
]


def database_dump(store: Store) -> list[str]:
    if not store.is_sqlite:
        with store.read_session() as session:
            return [repr(row) for table in reversed(Base.metadata.sorted_tables)
                    for row in session.execute(select(table).order_by(*table.primary_key.columns))]
    database = sqlite3.connect(store.sqlite_path)
    try:
        return list(database.iterdump())
    finally:
        database.close()


def test_smx_query_cannot_change_anything(store: Store, tmp_path: Path) -> None:
    add_soak_jobs(store, aggregates=3, rng=random.Random(0))  # some rows to lose
    attached = tmp_path / "evil.db"
    before = database_dump(store)
    for sql in HOSTILE_QUERIES:
        sql = sql.replace("{attached}", str(attached))
        assert_user_error(run_cli("query", sql, "--store", store.location), "query failed")
    assert database_dump(store) == before
    assert not attached.exists()
    assert run_cli("query", "SELECT count(*) FROM jobs", "--store", store.location, "-f", "csv")[0] == 0


class CodeOnLoad:
    """A pickle that runs code when loaded: touches a file named `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


def test_loading_a_checkpoint_never_runs_code(tmp_path: Path) -> None:
    from smx.errors import UserError
    from smx.science.models import build_model

    marker = tmp_path / "code-ran"
    state = {"epoch": 1, "model": CodeOnLoad(marker), "optimizer": {}, "scheduler": {}, "rng": {}, "settings": {}}
    as_torch_checkpoint, as_plain_pickle = tmp_path / "torch.pt", tmp_path / "pickle.pt"
    torch.save(state, as_torch_checkpoint)
    as_plain_pickle.write_bytes(pickle.dumps(state, protocol=2))
    for path in (as_torch_checkpoint, as_plain_pickle):
        with pytest.raises(ValueError, match="unreadable checkpoint"):
            load_checkpoint(path)
        with pytest.raises(UserError):
            load_weights(build_model("lenet", "mnist-mini"), path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(CodeOnLoad(marker)))  # the payload is real: an unrestricted load runs it
    assert marker.exists()


@pytest.mark.parametrize("field, name", [
    ("experiment", "../escape"), ("experiment", "a/b"), ("experiment", "/tmp/absolute"), ("experiment", ".."),
    ("experiment", ".hidden"), ("experiment", "back\\slash"), ("experiment", "x" * 65), ("experiment", ""),
    ("variant", "../escape"), ("variant", "/etc"), ("variant", "a/../../b"), ("variant", ".."),
])
def test_names_that_could_leave_the_store_are_refused_before_anything_is_written(
    tmp_path: Path, field: str, name: str
) -> None:
    spec = tmp_path / "spec.toml"
    text = spec_text("safe")
    if field == "experiment":
        text = text.replace('name = "safe"', f"name = {name!r}")
    else:
        text += f"\n[[variant]]\nname = {name!r}\n"
    spec.write_text(text)
    store = tmp_path / "store"
    assert_user_error(run_cli("submit", str(spec), "--store", str(store)), "not a safe name")
    assert not store.exists()


def test_config_names_stay_inside_the_results_folder(tmp_path: Path) -> None:
    # Config names become file names under store/results/<experiment>/: every swept value ends up in one.
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text("names") + textwrap.dedent("""
        [sweep.grid]
        "train.sigma" = [0.25, 1e-3]
        "certify.split" = ["test", "train"]
        "experiment.seed" = [0, 4294967295]

        [[variant]]
        name = "a.b-c_d"

        [[variant]]
        name = "smoothmix"
        train.method = "smoothmix"
    """))
    results = tmp_path / "store" / "results" / "names"
    names = [config.name for config in build_plan(load_spec(spec)).configs]
    assert len(names) == len(set(names)) == 16
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", name), name
        assert (results / f"{name}.tsv").resolve().parent == results.resolve()


def test_a_huge_sweep_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    values = ", ".join(str(0.01 * step) for step in range(1, 101))
    spec.write_text(spec_text("huge") + f'\n[sweep.grid]\n"train.sigma" = [{values}]\n"train.lr" = [{values}]\n'
                    f'"certify.n0" = [10, 20]\n')
    store = tmp_path / "store"
    assert_user_error(run_cli("submit", str(spec), "--store", str(store)), "20,000 configs",
                      f"limit of {MAX_CONFIGS:,}")
    assert not store.exists()


# ---- edited specs ----


def test_jobs_of_a_config_removed_while_they_were_pending_never_run(tmp_path: Path) -> None:
    """`smx submit` interrupted while every job was pending, a variant deleted from the spec, `smx submit` again:
    only the jobs of the remaining config run, and the dropped ones stay unrun, cancelled, with the reason."""
    store_dir = tmp_path / "store"
    variant_q = '\n[[variant]]\nname = "q"\ntrain.sigma = 0.25\n'
    both = spec_text("edited", epochs=1, max_samples=2) + '\n[[variant]]\nname = "p"\n' + variant_q
    before = enqueue(store_dir, both)
    spec = tmp_path / "edited.toml"
    spec.write_text(both.replace(variant_q, ""))
    submit = subprocess.run(smx_command("submit", str(spec), "--store", str(store_dir), "--gpus", "none"),
                            capture_output=True, text=True, env=environment(), timeout=TIMEOUT_SECONDS)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert "all 3 jobs done" in submit.stdout
    assert "3 pending job(s) that the spec no longer plans (configs removed or changed) will not run" in submit.stdout
    store = open_store(str(store_dir), create=False)
    after = {job.key for job in build_plan(load_spec(spec)).jobs}
    dropped = {job.key for job in before.jobs} - after
    assert len(dropped) == 3  # q's training and certification, and the aggregate of p and q
    with store.read_session() as session:
        jobs = session.scalars(select(Job)).all()
    assert {job.key: (job.status, job.attempts) for job in jobs} == {
        **{key: ("done", 1) for key in after}, **{key: ("cancelled", 0) for key in dropped}}
    assert {job.error for job in jobs if job.key in dropped} == {queue.DROPPED_FROM_EVERY_PLAN}
    assert not any(store.log_path(key).exists() for key in dropped)
