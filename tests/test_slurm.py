"""Jobs sent to a real Slurm cluster (scripts/ci_services.sh starts one on this host) with a PostgreSQL store."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import smx_command
from tests.servers import fresh_postgres_database, require_slurm
from tests.specs import tiny_spec, variants

TIMEOUT_SECONDS = 300


def spec_text(name: str, *, epochs: int = 1) -> str:
    return tiny_spec(name, epochs=epochs) + SLURM_EXECUTOR + variants("gaussian", "stability")


SLURM_EXECUTOR = """
[executor.slurm]
gpus_per_job = 0
cpus_per_job = 1
"""


class Cluster:
    """One test's view of the cluster: a fresh PostgreSQL store, its files, and the smx command."""

    def __init__(self, url: str, files: Path) -> None:
        self.url, self.files = url, files

    def environment(self) -> dict[str, str]:
        # One thread per job everywhere, so that a local run and a Slurm run compute the same numbers.
        return {**os.environ, "SMX_STORE": self.url, "SMX_STORE_FILES": str(self.files), "OMP_NUM_THREADS": "1",
                "CUDA_VISIBLE_DEVICES": ""}

    def smx(self, *arguments: str, store: str | None = None) -> subprocess.CompletedProcess:
        environment = self.environment()
        if store is not None:
            environment["SMX_STORE"] = store
        return subprocess.run(smx_command(*arguments), capture_output=True, text=True, env=environment,
                              timeout=TIMEOUT_SECONDS)

    def query(self, sql: str, store: str | None = None) -> list[dict]:
        result = self.smx("query", sql, "--format", "json", store=store)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(1.0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_slurm()
    with fresh_postgres_database() as url:
        yield Cluster(url, tmp_path / "files")


def slurm_states(slurm_job_ids: list[str]) -> dict[str, str]:
    answer = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(slurm_job_ids)], capture_output=True,
                            text=True)
    return dict(line.split() for line in answer.stdout.splitlines() if line.strip())


def test_a_spec_sent_to_slurm_runs_with_the_keys_and_results_of_a_local_run(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(spec_text("tiny-slurm"))
    sent = cluster.smx("submit", str(spec), "--executor", "slurm")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "all 5 jobs done" in sent.stdout
    assert "smx:smx@" not in sent.stdout  # the store's password is not printed
    jobs = cluster.query("SELECT key, kind, status, attempts, device, slurm_job_id, log_path FROM jobs")
    assert {(job["status"], job["attempts"]) for job in jobs} == {("done", 1)}
    slurm_job_ids = {job["slurm_job_id"] for job in jobs}
    assert len(slurm_job_ids) == 5 and None not in slurm_job_ids
    assert all(job["device"] == f"slurm-{job['slurm_job_id']}" for job in jobs)
    for job in jobs:  # the job's output is in the store's log, under the Slurm job's header
        log = Path(job["log_path"]).read_text()
        assert log.startswith(f"==== {job['kind']}/") and f"slurm-{job['slurm_job_id']}" in log.splitlines()[0]
    assert (cluster.files / "slurm").is_dir()  # submitit's own files, for Slurm-level problems

    local_store = str(tmp_path / "local-store")
    local = cluster.smx("submit", str(spec), "--executor", "local", "--gpus", "none", "--cpu-jobs", "2",
                        store=local_store)
    assert local.returncode == 0, local.stdout + local.stderr
    local_jobs = cluster.query("SELECT key, slurm_job_id FROM jobs", store=local_store)
    assert {job["key"] for job in local_jobs} == {job["key"] for job in jobs}
    assert {job["slurm_job_id"] for job in local_jobs} == {None}
    certificates = "SELECT job_key, sample_index, prediction, radius FROM certificates ORDER BY job_key, sample_index"
    from_slurm, from_local = cluster.query(certificates), cluster.query(certificates, store=local_store)
    assert [(row["job_key"], row["sample_index"], row["prediction"]) for row in from_slurm] == [
        (row["job_key"], row["sample_index"], row["prediction"]) for row in from_local]
    assert [row["radius"] for row in from_slurm] == pytest.approx([row["radius"] for row in from_local], abs=1e-6)


def test_a_requeued_slurm_job_resumes_its_training_from_its_last_checkpoint(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "requeue.toml"
    spec.write_text(spec_text("requeue-slurm", epochs=8))
    sent = cluster.smx("submit", str(spec), "--executor", "slurm", "--detach")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    epochs_sql = ("SELECT j.slurm_job_id AS slurm_job_id, j.status AS status, j.attempts AS attempts, "
                  "count(m.epoch) AS epochs, count(DISTINCT m.epoch) AS distinct_epochs "
                  "FROM jobs j LEFT JOIN train_metrics m ON m.job_key = j.key "
                  "WHERE j.name = 'train/stability' GROUP BY j.key, j.slurm_job_id, j.status, j.attempts")

    def training() -> dict:
        return cluster.query(epochs_sql)[0]

    cluster.wait_until(lambda: training()["epochs"] >= 2, "two epochs of training")
    slurm_job_id = training()["slurm_job_id"]
    # What Slurm does to a preempted job: SIGTERM to its processes, then back to the queue.
    assert subprocess.run(["scontrol", "requeue", slurm_job_id]).returncode == 0
    cluster.wait_until(lambda: training()["status"] == "pending", "the job back in the store's queue", timeout=60)
    # Slurm holds a requeued job back for two minutes; a cluster's admin (here the test) may let it start now.
    cluster.wait_until(lambda: slurm_states([slurm_job_id]).get(slurm_job_id) == "PENDING",
                       "the Slurm job pending again", timeout=60)
    # slurmd refuses to launch it with a credential made in the second of the requeue, which it revoked ("Job
    # credential revoked": the job then fails for good), so the start waits for the next second.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={slurm_job_id}", "StartTime=now"], capture_output=True)
    cluster.wait_until(lambda: cluster.query("SELECT count(*) AS n FROM jobs WHERE status = 'done'")[0]["n"] == 5,
                       "every job done")
    resumed = training()
    assert resumed["attempts"] == 2
    assert resumed["epochs"] == resumed["distinct_epochs"] == 8  # no epoch trained twice, none lost


def test_smx_cancel_and_configs_removed_from_the_spec_cancel_their_slurm_jobs(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "cancel.toml"
    spec.write_text(spec_text("cancel-slurm", epochs=200))
    sent = cluster.smx("submit", str(spec), "--executor", "slurm", "--detach")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    cluster.wait_until(lambda: cluster.query("SELECT count(*) AS n FROM jobs WHERE status = 'running'")[0]["n"] == 2,
                       "both trainings running")
    first_plan = {job["name"]: job for job in cluster.query("SELECT key, name, slurm_job_id FROM jobs")}

    spec.write_text(tiny_spec("cancel-slurm", epochs=200) + SLURM_EXECUTOR + variants("gaussian"))
    resent = cluster.smx("submit", str(spec), "--executor", "slurm", "--detach")
    assert resent.returncode == 0, resent.stdout + resent.stderr
    dropped = [first_plan["certify/stability"], first_plan["aggregate/cancel-slurm"]]
    output = " ".join(resent.stdout.split())
    assert "2 pending job(s) that the spec no longer plans (configs removed or changed) will not run" in output
    assert f"Their Slurm jobs were cancelled: {', '.join(sorted(job['slurm_job_id'] for job in dropped))}." in output
    train_stability = first_plan["train/stability"]["key"][:12]
    assert (f"train/stability ({train_stability}), which the spec no longer plans, is running and left to finish; "
            f"`smx cancel {train_stability}` stops it.") in output
    cluster.wait_until(lambda: not set(slurm_states([job["slurm_job_id"] for job in dropped]).values())
                       - {"CANCELLED"}, "the removed configs' Slurm jobs cancelled", timeout=60)

    # The running training of the removed config is left to finish; here it is cancelled by its key.
    cancelled = cluster.smx("cancel", "cancel-slurm", first_plan["train/stability"]["key"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert "4 job(s) cancelled" in cancelled.stdout and "Slurm jobs" in cancelled.stdout
    assert {job["status"] for job in cluster.query("SELECT status FROM jobs")} == {"cancelled"}
    slurm_job_ids = [job["slurm_job_id"] for job in cluster.query("SELECT slurm_job_id FROM jobs")]
    cluster.wait_until(lambda: not set(slurm_states(slurm_job_ids).values()) - {"CANCELLED", "COMPLETED", "FAILED"},
                       "every Slurm job ended", timeout=60)


def test_a_failed_job_stops_its_dependents_in_slurm_and_submit_exits_1(cluster: Cluster, tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    spec = tmp_path / "fail.toml"
    spec.write_text(spec_text("fail-slurm").replace('dataset = "mnist-mini"',
                                                    f'dataset = "fashion-mnist"\nroot = "{empty}"'))
    sent = cluster.smx("submit", str(spec), "--executor", "slurm")
    assert sent.returncode == 1, sent.stdout + sent.stderr
    jobs = {job["name"]: job for job in cluster.query("SELECT name, status, error, slurm_job_id FROM jobs")}
    for name in ("train/gaussian", "train/stability"):
        assert jobs[name]["status"] == "failed" and str(empty) in jobs[name]["error"]
    waiting = [job for job in jobs.values() if job["status"] == "pending"]
    assert len(waiting) == 3  # two certifications and the aggregate wait for a retry
    cluster.wait_until(lambda: not set(slurm_states([job["slurm_job_id"] for job in waiting]).values())
                       - {"CANCELLED", "COMPLETED", "FAILED"}, "no Slurm job left waiting", timeout=60)


def test_without_slurm_commands_submit_says_so_and_queues_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text("no-slurm"))
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    store = tmp_path / "store"
    environment = {**os.environ, "PATH": str(no_slurm)}
    result = subprocess.run(smx_command("submit", str(spec), "--executor", "slurm", "--store", str(store)),
                            capture_output=True, text=True, env=environment, timeout=TIMEOUT_SECONDS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no `sbatch` on this machine" in result.stderr and "--executor local" in result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists()


def test_a_job_sbatch_refuses_is_a_clear_error_naming_the_setting(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "gpus.toml"
    spec.write_text(spec_text("gpus-slurm").replace("gpus_per_job = 0", "gpus_per_job = 1"))  # no GPUs in this Slurm
    refused = cluster.smx("submit", str(spec), "--executor", "slurm")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "sbatch refused train/" in refused.stderr and "executor.slurm.gpus_per_job = 0" in refused.stderr
    jobs = cluster.query("SELECT status, slurm_job_id FROM jobs")
    assert jobs and all(job["status"] == "pending" and job["slurm_job_id"] is None for job in jobs)


def test_a_slurm_job_pickled_before_its_class_moved_still_loads() -> None:
    import pickle

    from smx.scheduler.slurm_job import SlurmJob

    # What submitit wrote for a job sent while the class was smx.scheduler.slurm.SlurmJob (protocol 0: plain names).
    earlier = pickle.dumps(SlurmJob(), protocol=0).replace(b"smx.scheduler.slurm_job", b"smx.scheduler.slurm")
    assert b"smx.scheduler.slurm\nSlurmJob" in earlier
    assert type(pickle.loads(earlier)) is SlurmJob
