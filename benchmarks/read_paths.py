"""Reading results at the paper's scale: what `smx status`, `smx report` and each refresh of `smx tui` cost.

Builds a store in a temporary folder: one experiment of --configs SmoothMix configs on mnist-mini (a sweep over
eta and sigma), every train and certify job done, --images certificates per certify job (made up, seeded), and
its aggregate job not run, so that results are provisional: summarised from the certificates at each read, the
heaviest case. Then times, in this process, the overview (`smx status`), the provisional results (`smx report`,
`smx query --experiment`), and the TUI's loads of each tab: the first load of a tab is the baseline, and later
loads, which read only what changed since, are printed as ratios against it (the TUI reloads every second).

    python benchmarks/read_paths.py
    python benchmarks/read_paths.py --configs 50 --images 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smx.db.models import Certificate, Job, utcnow  # noqa: E402
from smx.db.queries import experiments_overview  # noqa: E402
from smx.db.store import Store, open_store  # noqa: E402
from smx.plan import build_plan  # noqa: E402
from smx.report import experiment_results  # noqa: E402
from smx.scheduler.queue import enqueue  # noqa: E402
from smx.spec import parse_spec  # noqa: E402
from smx.tui.data import StoreReader  # noqa: E402
from smx.tui.model import LoadRequest  # noqa: E402

EXPERIMENT = "read_paths"


def spec_text(configs: int) -> str:
    etas = ", ".join(f"{1.0 + index:.1f}" for index in range((configs + 1) // 2))
    return f"""
[experiment]
name = "{EXPERIMENT}"

[data]
dataset = "mnist-mini"

[train]
method = "smoothmix"

[sweep.grid]
"train.smoothmix.eta" = [{etas}]
"train.sigma" = [0.25, 0.5]
"""


def build_store(root: Path, configs: int, images: int) -> Store:
    """The experiment enqueued, its train and certify jobs done with `images` certificates each."""
    store = open_store(str(root / "store"))
    spec_path = root / f"{EXPERIMENT}.toml"
    spec_path.write_text(spec_text(configs))
    plan = build_plan(parse_spec(spec_path.read_text(), spec_path))
    enqueue(store, plan, spec_path)
    finished = [job.key for job in plan.jobs if job.kind in ("train", "certify")]
    generator = random.Random(0)
    with store.session() as session:
        session.execute(update(Job).where(Job.key.in_(finished)).values(
            status="done", attempts=1, progress=1.0, started_at=utcnow(), finished_at=utcnow()))
        for job in plan.jobs:
            if job.kind != "certify":
                continue
            rows = []
            for index in range(images):
                draw, label = generator.random(), index % 10
                prediction = -1 if draw < 0.1 else (label + 1) % 10 if draw < 0.2 else label
                radius = 0.0 if prediction == -1 else 2.5 * generator.random()
                rows.append({"job_key": job.key, "sample_index": index, "label": label, "prediction": prediction,
                             "radius": radius, "correct": int(prediction == label), "pa_lower": None, "count": None,
                             "seconds": 0.02})
            session.execute(insert(Certificate), rows)
    return store


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=40)
    parser.add_argument("--images", type=int, default=10_000, help="certificates per config")
    parser.add_argument("--repeats", type=int, default=3, help="loads after the first")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store = build_store(Path(folder), arguments.configs, arguments.images)
        print(f"store: {arguments.configs} configs x {arguments.images:,} certificates, aggregate not run "
              f"(built in {time.perf_counter() - started:.1f} s)")

        def overview() -> None:
            with store.read_session() as session:
                experiments_overview(session)

        print(f"{'read':<44} {'first s':>8} {'again s':>8} {'ratio':>7}")
        print(f"{'smx status: overview (no cache, each run)':<44} {seconds(overview):>8.3f}")
        print(f"{'smx report / query -e: provisional results':<44} "
              f"{seconds(lambda: experiment_results(store, EXPERIMENT)):>8.3f}")
        for tab in ("experiments", "jobs", "results", "curves"):
            reader = StoreReader(str(store.root))
            request = LoadRequest(experiment=EXPERIMENT, results=tab == "results", curves=tab == "curves")
            first = seconds(lambda: reader.load(request))
            again = statistics.median(seconds(lambda: reader.load(request)) for _ in range(arguments.repeats))
            print(f"{'smx tui: ' + tab + ' tab refresh':<44} {first:>8.3f} {again:>8.3f} {first / again:>6.0f}x")
        store.engine.dispose()


if __name__ == "__main__":
    main()
