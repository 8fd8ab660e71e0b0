"""The local executor: one worker process per slot on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from smx.db.store import Store
from smx.plan import Plan
from smx.science.catalog import DATASETS
from smx.science.data_files import data_root, missing_files_message


@dataclass(frozen=True)
class LocalOptions:
    gpus: str = "auto"
    jobs_per_gpu: int = 1
    cpu_jobs: int = 1

    def worker_arguments(self) -> list[str]:
        return ["--gpus", self.gpus, "--jobs-per-gpu", str(self.jobs_per_gpu), "--cpu-jobs", str(self.cpu_jobs)]


def start_workers(store: Store, options: LocalOptions, count: int, *, detach: bool) -> list[subprocess.Popen]:
    """Start `count` workers; each takes a free slot or exits at once if another scheduler holds them all."""
    command = [sys.executable, "-m", "smx", "worker", "--store", store.location, *options.worker_arguments()]
    workers = []
    for _ in range(count):
        if detach:
            log = (store.root / "logs" / "workers.log").open("a")
            workers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=os.environ.copy()))
            log.close()
        else:
            workers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True, env=os.environ.copy()))
    return workers


def missing_data(plan: Plan, done: set[str]) -> list[str]:
    """What the plan's jobs still to run would not find on this machine: one line per missing dataset split,
    naming a config that needs it. Empty when every job can load its data here."""
    problems: dict[str, str] = {}
    checked: dict[tuple[str, str, Path, bool], str | None] = {}  # each split is read once, not once per job
    for job in plan.jobs:
        if job.key in done or job.kind == "aggregate" or not DATASETS[job.inputs["data"]["dataset"]].needs_root:
            continue
        # The split each task loads: training its train split, certification its configured one, analysis test.
        split = "train" if job.kind == "train" else job.inputs["certify"]["split"] if job.kind == "certify" else "test"
        where = (job.inputs["data"]["dataset"], split, data_root(job.runtime.get("data_root")),
                 job.runtime.get("download", False))
        if where not in checked:
            checked[where] = missing_files_message(*where)
        message = checked[where]
        if message is not None:
            problems.setdefault(message, f"config {job.config_name!r} ({job.kind}): {message}")
    return list(problems.values())
