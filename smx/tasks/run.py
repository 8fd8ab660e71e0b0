"""Entry point of a job's process: `python -m smx.tasks.run KEY --store LOCATION --device DEVICE`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from smx.db.models import Job
from smx.db.store import file_storage_error, open_store, resolve_location, storage_cause
from smx.errors import UserError, exception_chain
from smx.tasks.progress import WITHDRAWN_EXIT_CODE, ProgressReporter, Withdrawn

TASKS = {"train": "smx.tasks.train", "certify": "smx.tasks.certify", "analyze": "smx.tasks.analyze",
         "aggregate": "smx.tasks.aggregate"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smx.tasks.run")
    parser.add_argument("key")
    parser.add_argument("--store", required=True)
    parser.add_argument("--device", default="cpu")
    # The attempt its worker claimed; by default the job's current one (for a job run by hand). The worker's number
    # is the one that counts: a process that starts late, after its attempt was withdrawn, must not take the next.
    parser.add_argument("--attempt", type=int)
    arguments = parser.parse_args(argv)
    try:
        store = open_store(arguments.store, create=False)
        with store.session() as session:
            job = session.get(Job, arguments.key)
            if job is None:
                raise UserError(f"no job with key {arguments.key} in the store at {store.display_location}")
        task = importlib.import_module(TASKS[job.kind])
        print(f"{job.kind} {job.name} ({job.key[:12]}) on {arguments.device}", flush=True)
        attempt = job.attempts if arguments.attempt is None else arguments.attempt
        task.run(store, job, arguments.device, ProgressReporter(store, job.key, attempt))
    except Withdrawn as withdrawn:
        print(f"stopped: {withdrawn}", flush=True)
        return WITHDRAWN_EXIT_CODE
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr, flush=True)
        return 2
    except Exception as error:
        # A full disk or a full GPU is the user's to fix, not a bug: say so plainly, whatever library failed.
        problem = _resource_problem(error, arguments.store, arguments.device, arguments.key)
        if problem is None:
            traceback.print_exc()
            return 1
        print(f"error: {problem.message}", file=sys.stderr, flush=True)
        return 2
    print("finished", flush=True)
    return 0


def _resource_problem(error: BaseException, store: str, device: str, key: str) -> UserError | None:
    """The error to show for a job that failed for want of disk space or of GPU memory; None for anything else."""
    retry = f"`smx retry {key[:12]}`: the job resumes where it stopped (its last checkpoint or certified image)"
    cause = storage_cause(error)
    if cause is not None:
        _, store_root = resolve_location(store)
        return file_storage_error(cause, store_root, then=retry)
    torch = sys.modules.get("torch")  # imported by every task that can fill a GPU; never imported here for this
    out_of_memory = torch and next((cause for cause in exception_chain(error)
                                    if isinstance(cause, torch.OutOfMemoryError)), None)
    if not out_of_memory:
        return None
    said = str(out_of_memory).strip().splitlines()[0] if str(out_of_memory).strip() else "out of memory"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    # A worker's job sees its own GPU alone, as cuda:0: name the GPU as the machine numbers it.
    where = f"GPU {visible}" if device.startswith("cuda") and visible.isdigit() else device
    return UserError(
        f"the job ran out of memory on {where}: {said}\n"
        "Fix: run fewer jobs on this GPU at once (`--jobs-per-gpu` of `smx submit` and `smx worker`) or stop what "
        "else uses it; a certify job also fits in less with a smaller certify.batch_size (the same certificates; set "
        "it in the spec and submit it again, or SMX_CERTIFY_BATCH_SIZE in the worker's environment). "
        f"Then {retry}.")


if __name__ == "__main__":
    sys.exit(main())
