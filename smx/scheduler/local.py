"""The local executor: one worker process per slot on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from smx.db.store import Store


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
