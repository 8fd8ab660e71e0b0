"""Entry point of a job's process: `python -m smx.tasks.run KEY --store LOCATION --device DEVICE`."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from smx.db.models import Job
from smx.db.store import file_storage_error, open_store, resolve_location, storage_cause
from smx.errors import UserError
from smx.tasks.progress import ProgressReporter

TASKS = {"train": "smx.tasks.train", "certify": "smx.tasks.certify", "analyze": "smx.tasks.analyze",
         "aggregate": "smx.tasks.aggregate"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smx.tasks.run")
    parser.add_argument("key")
    parser.add_argument("--store", required=True)
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args(argv)
    try:
        store = open_store(arguments.store, create=False)
        with store.session() as session:
            job = session.get(Job, arguments.key)
            if job is None:
                raise UserError(f"no job with key {arguments.key} in the store at {store.display_location}")
        task = importlib.import_module(TASKS[job.kind])
        print(f"{job.kind} {job.name} ({job.key[:12]}) on {arguments.device}", flush=True)
        task.run(store, job, arguments.device, ProgressReporter(store, job.key))
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr, flush=True)
        return 2
    except Exception as error:
        # A full disk is the user's to fix, not a bug: say so plainly, whatever library the write failed in.
        cause = storage_cause(error)
        if cause is None:
            traceback.print_exc()
            return 1
        _, store_root = resolve_location(arguments.store)
        problem = file_storage_error(cause, store_root, then="`smx retry` the job: it resumes from its last checkpoint")
        print(f"error: {problem.message}", file=sys.stderr, flush=True)
        return 2
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
