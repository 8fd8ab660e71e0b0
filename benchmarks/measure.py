"""What the benchmarks share: device syncs and peak-memory measurement in a fresh process."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device, work: Callable[[], object]) -> int:
    """Memory that `work` adds at its peak: allocated tensors on CUDA, the resident set on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        return torch.cuda.max_memory_allocated(device) - before
    return peak_rss_growth(work)


def peak_rss_growth(work: Callable[[], object]) -> int:
    """Bytes by which the resident set grows at most while `work` runs (Linux). malloc_trim first hands freed
    memory back to the system so that reuse of it shows up; the size is sampled every millisecond."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    page_bytes = os.sysconf("SC_PAGE_SIZE")

    def resident_bytes() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page_bytes

    start = peak = resident_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak - start


def memory_in_fresh_process(script: str, arguments: list[str]) -> int:
    """Run `script` with `arguments` (which must include its --memory-of) and read the bytes it prints last."""
    finished = subprocess.run([sys.executable, script, *arguments], check=True, capture_output=True, text=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])["peak_bytes"]


def print_peak_memory(device: torch.device, work: Callable[[], object]) -> None:
    """The fresh process's side of memory_in_fresh_process: measure `work` and print what the parent reads."""
    print(json.dumps({"peak_bytes": peak_memory_bytes(device, work)}))
