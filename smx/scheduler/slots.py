"""Execution slots: one per GPU (or several with --jobs-per-gpu), or CPU slots when there is no GPU.

A slot is owned by whoever holds its file lock. The OS releases the lock when the owner dies, which is how
a later worker knows that a job marked running on that slot was abandoned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from smx.errors import UserError


@dataclass(frozen=True)
class Slot:
    name: str
    # The GPU index as the machine numbers it, or None for a CPU slot.
    gpu: str | None
    lock_path: Path
    # CPU threads for the job: the cores shared among the CPU slots, since oversubscribed threads run slower.
    cpu_threads: int | None = None

    @property
    def device(self) -> str:
        """The device the job uses inside its process (which sees only its own GPU)."""
        return "cuda" if self.gpu is not None else "cpu"

    def environment(self) -> dict[str, str]:
        # An empty CUDA_VISIBLE_DEVICES hides every GPU, so a CPU slot never touches one by accident.
        environment = {"CUDA_VISIBLE_DEVICES": self.gpu if self.gpu is not None else ""}
        if self.cpu_threads is not None and "OMP_NUM_THREADS" not in os.environ:
            environment["OMP_NUM_THREADS"] = str(self.cpu_threads)
        return environment


def detect_gpus() -> list[str]:
    """GPU indices this process may use, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [index.strip() for index in visible.split(",") if index.strip() and index.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        # Not an error: CPU slots are a legitimate fallback. But a broken driver must not pass for a CPU machine.
        print(f"warning: nvidia-smi failed ({_nvidia_smi_failure(error)}), so jobs will run on CPU slots. "
              "Fix: check the NVIDIA driver (run nvidia-smi), or pass --gpus none to run on CPU without this warning.",
              file=sys.stderr, flush=True)
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def _nvidia_smi_failure(error: OSError | subprocess.SubprocessError) -> str:
    if isinstance(error, subprocess.TimeoutExpired):
        return f"no answer within {error.timeout:g} s"
    if isinstance(error, subprocess.CalledProcessError):
        detail = (error.stderr or error.stdout or "").strip().splitlines()
        return f"exit status {error.returncode}" + (f": {detail[-1]}" if detail else "")
    return str(error)


def parse_gpus(option: str | None) -> list[str]:
    """--gpus: 'auto' (default), 'none', a count ('2') or a list of indices ('0,3'; '0,' for index 0 alone). A bare
    '0' is refused: read as a count it would run on the CPU where GPU 0 was most likely meant."""
    if option is None or option == "auto":
        return detect_gpus()
    if option == "none":
        return []
    if option.isdigit() and int(option) == 0:
        raise UserError(f"--gpus {option} could mean no GPU or GPU 0.\n"
                        "Fix: use --gpus none to run on the CPU, or --gpus 0, (with the comma) for GPU 0 alone.")
    if option.isdigit() and "," not in option:
        available = detect_gpus()
        if int(option) > len(available):
            raise UserError(f"--gpus {option}: only {len(available)} GPU(s) visible.\n"
                            "Fix: ask for fewer, list indices (--gpus 0,1), or use --gpus none for CPU.")
        return available[: int(option)]
    indices = [index.strip() for index in option.split(",") if index.strip()]
    if not indices or not all(index.isdigit() for index in indices):
        raise UserError(f"--gpus {option!r} is not a GPU count or a list of indices.\n"
                        "Fix: use auto, none, a count like 2, or indices like 0,1.")
    available = detect_gpus()
    missing = [index for index in indices if index not in available]
    if missing:
        raise UserError(f"--gpus {option}: no GPU {', '.join(missing)} is visible here (visible: "
                        f"{', '.join(available) or 'none'}).\n"
                        "Fix: list visible indices, or use --gpus none for CPU.")
    return indices


def make_slots(locks_dir: Path, gpus: list[str], jobs_per_gpu: int = 1, cpu_jobs: int = 1) -> list[Slot]:
    if jobs_per_gpu < 1 or cpu_jobs < 1:
        raise UserError("--jobs-per-gpu and --cpu-jobs must be at least 1.")
    if gpus:
        return [Slot(f"gpu{gpu}-slot{index}", gpu, locks_dir / f"gpu{gpu}-slot{index}.lock")
                for gpu in gpus for index in range(jobs_per_gpu)]
    threads = max(1, (os.cpu_count() or 1) // cpu_jobs)
    return [Slot(f"cpu-slot{index}", None, locks_dir / f"cpu-slot{index}.lock", cpu_threads=threads)
            for index in range(cpu_jobs)]


def try_lock(path: Path) -> FileLock | None:
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def is_free(path: Path) -> bool:
    lock = try_lock(path)
    if lock is None:
        return False
    lock.release()
    return True


def claim_slot(slots: list[Slot]) -> tuple[Slot, FileLock] | None:
    """Lock the first free slot; the lock is held for the worker's lifetime."""
    for slot in slots:
        lock = try_lock(slot.lock_path)
        if lock is not None:
            return slot, lock
    return None
