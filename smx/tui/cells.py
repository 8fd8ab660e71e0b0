"""Table cells (what each column shows for an experiment, a job or a results row, and what it sorts by) and the
other bits of text the screens share."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

from smx.db.queries import PROVISIONAL_MARK
from smx.reference import PaperAcrValue
from smx.tui.model import JobSummary, ResultsTable

if TYPE_CHECKING:
    from smx.db.queries import ExperimentOverview

STATUS_STYLES = {"pending": "yellow", "running": "cyan", "done": "green", "failed": "red", "cancelled": "magenta"}
# Decimals of the ACR, accuracies and rates in the tables.
METRIC_DIGITS = 3
# Cells of the experiments table's progress bar.
PROGRESS_BAR_WIDTH = 6
# Sorting by status puts what needs attention first.
STATUS_ORDER = {status: order for order, status in enumerate(("failed", "running", "pending", "cancelled", "done"))}


class Cell(NamedTuple):
    """A table cell: its text, and the value it sorts by (so "epoch 10/90" sorts after "epoch 9/90").

    A tuple rather than a Rich Text: cheap to make, compare and measure for 10,000 rows, and turned into Text
    only for the rows on screen.
    """

    shown: str
    sort_value: tuple[Any, ...]
    style: str = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.shown, style=self.style, no_wrap=True, overflow="ellipsis", end="")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.shown)
        return Measurement(width, width)


def cell(value: Any, shown: str | None = None, style: str = "") -> Cell:
    """A cell showing `shown` (default: the value) and sorting by the value.

    Numbers sort as numbers, anything else by its text (dates too, as ISO text), empty values last: a column of
    mixed values still sorts.
    """
    if shown is None:
        shown = "" if value is None else str(value)
    if value is None or value == "":
        order: tuple[Any, ...] = (2, "")
    elif isinstance(value, (int, float)):
        order = (0, value)
    else:
        order = (1, str(value))
    return Cell(shown, order, style)


def shown_path(path: str | Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def middle_cut(text: str, room: int) -> str:
    """`text` in at most `room` characters, cut in the middle, keeping both ends."""
    if len(text) <= room:
        return text
    if room < 2:
        return text[:room]
    tail = (room - 1) // 2
    return f"{text[:room - 1 - tail]}…{text[len(text) - tail:]}"


def short_config_names(names: Sequence[str], room: int) -> dict[str, str]:
    """Each name in at most `room` characters, told apart from the others where it can be.

    Config names are `-`-separated parts (variant, then `label=value` per swept key), and the configs of one
    experiment share many of them wherever the values that differ sit: the parts common to all at the start and at
    the end go first (marked …), then a name still too long is cut in its middle.
    """
    if all(len(name) <= room for name in names):
        return {name: name for name in names}
    parts = [name.split("-") for name in names]
    shortest = min(len(name_parts) for name_parts in parts)

    def shared(position: int) -> bool:
        return len(names) > 1 and len({name_parts[position] for name_parts in parts}) == 1

    lead = next((count for count in range(shortest - 1) if not shared(count)), shortest - 1)
    trail = next((count for count in range(shortest - 1 - lead) if not shared(-1 - count)), shortest - 1 - lead)
    kept = [name_parts[lead:len(name_parts) - trail] for name_parts in parts]

    def shortened(abbreviate: bool) -> list[str]:
        # Abbreviated, `noise_samples=4` is `n=4`: the values, which tell configs apart, stay whole.
        return [middle_cut(("…" if lead else "") + "-".join(_initial_label(part) if abbreviate else part
                                                            for part in name_parts) + ("…" if trail else ""), room)
                for name_parts in kept]

    cut = shortened(abbreviate=False)
    if len(set(cut)) < len(set(names)):  # the cut took what differs: keep the values instead of the labels
        abbreviated = shortened(abbreviate=True)
        cut = abbreviated if len(set(abbreviated)) > len(set(cut)) else cut
    return dict(zip(names, cut))


def _initial_label(part: str) -> str:
    label, equals, value = part.partition("=")
    return f"{label[:1]}={value}" if equals and label else part


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def number(value: float | None) -> Cell:
    return cell(value, "" if value is None else f"{value:.{METRIC_DIGITS}f}")


def provisional_number(value: float) -> Cell:
    """A number that may still change (see db.queries.PROVISIONAL_BEST_ACR), marked as `smx status` marks it."""
    return cell(value, f"{value:.{METRIC_DIGITS}f}{PROVISIONAL_MARK}", "italic")


def status_cell(status: str) -> Cell:
    return Cell(status, (0, STATUS_ORDER.get(status, len(STATUS_ORDER))), STATUS_STYLES.get(status, ""))


EXPERIMENT_COLUMNS = [("name", "experiment"), ("progress", "done"), ("running", "run"), ("pending", "wait"),
                      ("failed", "fail"), ("cancelled", "cancel"), ("jobs", "jobs"), ("configs", "configs"),
                      ("best_acr", "best ACR"), ("updated", "updated")]


def experiment_cells(experiment: ExperimentOverview) -> tuple[Cell, ...]:
    counts = experiment.counts
    done = counts.get("done", 0) / experiment.total if experiment.total else 0.0

    def count(status: str) -> Cell:
        jobs = counts.get(status, 0)
        return cell(jobs, str(jobs), STATUS_STYLES[status] if jobs else "dim")

    return (
        cell(experiment.name, style="bold"),
        cell(done, f"{progress_bar(done)} {done:4.0%}"),
        count("running"), count("pending"), count("failed"), count("cancelled"),
        cell(experiment.total),
        cell(experiment.configs),
        provisional_number(experiment.best_acr) if experiment.best_acr_provisional else number(experiment.best_acr),
        cell(experiment.updated_at, f"{experiment.updated_at:%m-%d %H:%M}"),
    )


def progress_bar(fraction: float) -> str:
    filled = round(fraction * PROGRESS_BAR_WIDTH)
    return "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)


JOB_COLUMNS = [("kind", "kind"), ("config", "config"), ("status", "status"), ("progress", "progress"),
               ("device", "device"), ("elapsed", "elapsed"), ("eta", "ETA"), ("note", "note")]


def job_progress(job: JobSummary) -> str:
    if job.status == "running":
        return f"{job.progress:4.0%} {job.progress_text}".rstrip()
    if job.status == "pending":
        return f"waits: parent {job.blocked_by}" if job.blocked_by else job.progress_text or "ready"
    if job.status == "done":
        return job.progress_text or "done"
    # A failed or cancelled job shows how far it got; the texts the queue writes (starting, retrying, waiting to
    # resume) are not reports of its work, and after it stopped they would read as if it were still going.
    if job.progress_text in ("", "starting", "retrying", "waiting to resume", "waiting to retrain"):
        return ""
    return f"{job.progress:4.0%} {job.progress_text}"


def describe(job: JobSummary, experiment: str | None) -> str:
    """How a question about the job names it, with `experiment` in focus (or None)."""
    return f"{job.kind} job {job.config_label(experiment)} ({job.key[:12]})"


@lru_cache(maxsize=50_000)
def job_cells(job: JobSummary, experiment: str | None) -> tuple[Cell, ...]:
    """A job's row, with `experiment` in focus (or None). Cached: a refresh rebuilds only the rows of jobs that
    changed, so cells compare by identity."""
    return (
        cell(job.kind),
        cell(job.config_label(experiment)),
        status_cell(job.status),
        cell(job.progress, job_progress(job)),
        cell(job.device),
        cell(job.elapsed_seconds, duration(job.elapsed_seconds)),
        cell(job.eta_seconds, duration(job.eta_seconds)),
        cell(f"no word from its worker for {duration(job.silent_seconds)}", style="yellow")
        if job.silent_seconds is not None else cell(job.error_line, style="red" if job.status == "failed" else "dim"),
    )


def result_label(column: str) -> str:
    """Short column titles: acc_0_25 -> @0.25 (certified accuracy at radius 0.25)."""
    if column.startswith("acc_"):
        return "@" + column.removeprefix("acc_").replace("_", ".")
    return {"clean_accuracy": "clean", "abstain_rate": "abstain", "num_samples": "images", "acr": "ACR",
            "published_acr": "paper ACR"}.get(column, column)


# Results columns that hold a fraction or a radius; other numbers (sigma, swept hyperparameters) show as given.
METRIC_COLUMNS = ("acr", "published_acr", "clean_accuracy", "abstain_rate")


def result_cells(columns: list[str], row: tuple[Any, ...]) -> tuple[Cell, ...]:
    return tuple(_paper_cell(value) if column == "published_acr"
                 else number(value) if column in METRIC_COLUMNS or column.startswith("acc_")
                 else cell(value, f"{value:g}" if isinstance(value, float) else None)
                 for column, value in zip(columns, row))


def _paper_cell(value: PaperAcrValue | None) -> Cell:
    if value is None:
        return number(None)
    return cell(value.acr, f"{value.acr:.{METRIC_DIGITS}f}{INDICATIVE_MARK if value.indicative else ''}")


INDICATIVE_MARK = "*"


def results_caption(results: ResultsTable) -> str:
    """What the results tab shows, and what it cannot show yet."""
    if not results.rows:
        return f"{results.experiment}: no certified config yet (see the Jobs tab)"
    # A provisional table names the configs still to come, so that a partial row set is not read as the whole.
    shown = results.provisional or f"{results.experiment}: {len(results.rows)} certified config(s);"
    caption = f"{shown} @r: certified accuracy at radius r"
    if "published_acr" in results.columns:
        position = results.columns.index("published_acr")
        if any(row[position] is not None and row[position].indicative for row in results.rows):
            caption += (f"; {INDICATIVE_MARK}: trained or certified otherwise than the paper's row, so only "
                        "indicative (`smx report --compare paper` says how)")
    return caption
