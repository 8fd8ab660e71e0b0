"""Results out of the store: tables in CSV / JSON / Markdown, the paper-style report (text / Markdown / LaTeX,
optionally beside the published numbers) and certified-accuracy plots as PNG, PDF or SVG."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.control import strip_control_codes
from sqlalchemy import select
from sqlalchemy.orm import Session

from smx.db.models import Aggregate, Certificate, Experiment, ExperimentJob, Job
from smx.db.queries import (CertificatesStamp, aggregates_of, certificate_outcomes, jobs_view,
                             require_experiment)
from smx.db.readonly import QueryResult, run_query
from smx.db.store import Store
from smx.db.views import radius_column
from smx.errors import UserError
from smx.paths import written_whole
from smx.reference import (RADIUS_TOLERANCE, PublishedRow, Setting, find_published, nearest_published,
                           protocol_differences, published_protocol, setting_of)
from smx.science.metrics import DEFAULT_RADII, RADIUS_DECIMALS, certified_accuracy_curve
from smx.tasks.aggregate import aggregate_radii, summarise_config

FORMATS = ("table", "csv", "json", "md")
# What `smx plot --out` may end in; matplotlib writes each of them with any backend.
PLOT_FORMATS = ("png", "pdf", "svg")


def format_cell(value: Any) -> str:
    """A query result's value as shown in tables and Markdown (CSV and JSON keep full precision)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            # Four decimals at any magnitude: an ACR above 1 keeps as many digits as an accuracy below it.
            text = f"{value:.4f}".rstrip("0")
            return text + "0" if text.endswith(".") else text
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.6g}"
    return str(value)


def boxed_table(columns: list[str], rows: list[list[str]]) -> str:
    """The table as Rich draws one (its default heavy-headed box, a space of padding, cells that span lines, every
    column as wide as its widest line), without styles. Built directly: Rich measures and lays out every cell, which
    took 22 s for the 20,000 certificates of two configs."""
    if not columns:
        return ""
    # Control codes (a carriage return in a value) would move the terminal's cursor over the box: Rich drops them.
    split = [[strip_control_codes(cell.expandtabs(8)).split("\n") for cell in row] for row in [columns, *rows]]
    widths = [max(cell_len(line) for row in split for line in row[column]) for column in range(len(columns))]

    def rule(left: str, fill: str, middle: str, right: str) -> str:
        return left + middle.join(fill * (width + 2) for width in widths) + right + "\n"

    def lines_of(row: list[list[str]], edge: str) -> str:
        height = max(len(cell) for cell in row)
        return "".join(
            edge + edge.join(f" {line}{' ' * (width - cell_len(line))} " for line, width in
                             zip((cell[number] if number < len(cell) else "" for cell in row), widths)) + edge + "\n"
            for number in range(height))

    return (rule("┏", "━", "┳", "┓") + lines_of(split[0], "┃") + rule("┡", "━", "╇", "┩")
            + "".join(lines_of(row, "│") for row in split[1:]) + rule("└", "─", "┴", "┘"))


# The box in characters every terminal encoding has, for one that lacks the box-drawing ones.
ASCII_BOX = str.maketrans("┏┳┓┡╇┩└┴┘━─┃│", "+++++++++--||")


def to_csv(result: QueryResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return buffer.getvalue()


def _json_value(value: Any) -> Any:
    # JSON has no NaN or infinity (jq refuses Python's NaN and Infinity): null, as JavaScript's JSON.stringify writes.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    # The store keeps configs and swept values as JSON text (SQL gives no column types to tell them by): nested, so
    # that `jq '.[].config.train.sigma'` reads them.
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            nested = json.loads(value, parse_constant=_not_json)
        except ValueError:
            return value
        return nested if isinstance(nested, (dict, list)) else value
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is Python's, not JSON")


def to_json(result: QueryResult) -> str:
    """One object per row, keyed by column name: a name that several columns share is an error, not a lost value."""
    shared = [name for name, count in Counter(result.columns).items() if count > 1]
    if shared:
        raise UserError(f"--format json: several columns are named {', '.join(map(repr, shared))}, and a JSON "
                        "object keeps one value per name.\nFix: give each column its own name with AS (SELECT "
                        "j.status AS job_status, ...), or use --format csv, which keeps every column.")
    rows = [{column: _json_value(value) for column, value in zip(result.columns, row)} for row in result.rows]
    return json.dumps(rows, indent=2, default=str) + "\n"


def to_markdown(result: QueryResult) -> str:
    lines = ["| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns)]
    lines += ["| " + " | ".join(_markdown_cell(format_cell(value)) for value in row) + " |" for row in result.rows]
    return "\n".join(lines) + "\n"


def _markdown_cell(text: str) -> str:
    """A table cell: a | would end it and a line break the row, so both are written as Markdown keeps them."""
    return "<br>".join(text.replace("|", "\\|").splitlines())


def render(result: QueryResult, format: str) -> str:
    return {"csv": to_csv, "json": to_json, "md": to_markdown}[format](result)


@dataclass
class ExperimentResults(QueryResult):
    provisional: str | None = None  # see Summaries: the rows are those of the configs certified so far
    swept_columns: list[str] = field(default_factory=list)  # the columns of swept hyperparameters


def experiment_results(store: Store, experiment: str, *, required: bool = False,
                       summary_cache: SummaryCache | None = None) -> ExperimentResults:
    """The experiment's `results` rows, with each swept hyperparameter in a column of its own and a column for each
    radius its spec's [report] radii add to the view's. Until its aggregate job is done, the same rows for the
    configs certified so far (see summaries_of for `summary_cache`). With nothing certified yet: no rows, or, when
    `required`, the error that says why and what to do (as `smx report` gives)."""
    result = run_query(store, "SELECT * FROM results WHERE experiment = :experiment ORDER BY config",
                       {"experiment": experiment})
    stored_rows, provisional = result.rows, None
    with store.read_session() as session:
        if stored_rows:
            aggregates = aggregates_of(session, experiment)
        else:
            require_experiment(session, experiment)
            aggregates = []
            with contextlib.nullcontext() if required else contextlib.suppress(UserError):
                summaries = summaries_of(session, experiment, summary_cache)
                aggregates = summaries.aggregates
                stored_rows = [_results_row(aggregate, result.columns) for aggregate in aggregates]
                provisional = summaries.provisional
        requested = _requested_accuracies(aggregates)
    position = result.columns.index("hyperparams")
    swept_rows = [json.loads(row[position]) if isinstance(row[position], str) else (row[position] or {})
                  for row in stored_rows]
    swept_columns = sorted({key for swept in swept_rows for key in swept})
    radius_columns = [radius_column(radius) for radius in sorted({*DEFAULT_RADII, *(
        radius for accuracies in requested.values() for radius in accuracies)})]
    columns = [*result.columns[:position], *swept_columns, *result.columns[position + 1:]]
    first_radius = columns.index(radius_column(DEFAULT_RADII[0]))
    columns = [*columns[:first_radius], *radius_columns, *columns[first_radius + len(DEFAULT_RADII):]]
    rows = []
    for row, swept in zip(stored_rows, swept_rows):
        values = dict(zip(result.columns, row), **{key: swept.get(key) for key in swept_columns})
        values.update({radius_column(radius): accuracy
                       for radius, accuracy in requested.get(values["config"], {}).items()})
        rows.append(tuple(values.get(column) for column in columns))
    return ExperimentResults(columns, rows, provisional, swept_columns)


def _requested_accuracies(aggregates: list[Aggregate]) -> dict[str, dict[float, float]]:
    """Each config's certified accuracy at the radii off the results view's grid (its spec's [report] radii)."""
    grid = {round(radius, RADIUS_DECIMALS) for radius in DEFAULT_RADII}
    return {aggregate.config_name: {radius: item.accuracy for item in aggregate.certified
                                    if (radius := round(item.radius, RADIUS_DECIMALS)) not in grid}
            for aggregate in aggregates}


def _results_row(aggregate: Aggregate, columns: list[str]) -> tuple[Any, ...]:
    """A summary not stored yet as the `results` view would show it (db/views.py)."""
    accuracy = {round(item.radius, RADIUS_DECIMALS): item.accuracy for item in aggregate.certified}
    values = {
        "experiment": aggregate.experiment, "config": aggregate.config_name, "method": aggregate.method,
        "sigma": aggregate.sigma, "hyperparams": aggregate.hyperparams, "acr": aggregate.acr,
        "clean_accuracy": aggregate.clean_accuracy, "abstain_rate": aggregate.abstain_rate,
        "num_samples": aggregate.num_samples, "certify_key": aggregate.certify_key,
        **{radius_column(radius): accuracy.get(round(radius, RADIUS_DECIMALS)) for radius in DEFAULT_RADII},
    }
    return tuple(values[column] for column in columns)


def cannot_write(path: Path, error: OSError) -> UserError:
    """The error for an output that the user chose with --out (or its default) and that cannot be written."""
    return UserError(f"cannot write {path}: {error.strerror or error}.\nFix: choose a writable directory with --out.")


def plot_file(out: Path, experiment: str) -> Path:
    """The file `smx plot --out OUT` writes: OUT, or `<experiment>.png` in it when OUT is a directory. An error that
    names OUT and the fix when its extension is no format we write or when one of its parents is a file."""
    try:
        if out.is_dir():
            return out / f"{experiment}.png"
        blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    except OSError as error:
        raise cannot_write(out, error) from None
    if blocking is not None:
        raise UserError(f"--out {out}: {blocking} is a file, not a directory.\nFix: choose another path with --out.")
    formats = ", ".join(f".{extension}" for extension in PLOT_FORMATS[:-1]) + f" or .{PLOT_FORMATS[-1]}"
    extension = out.suffix.lower().removeprefix(".")
    if extension not in PLOT_FORMATS:
        given = f"the extension .{extension}" if extension else "a name without an extension"
        raise UserError(f"--out {out}: {given} is no image format that smx plot writes ({formats}).\n"
                        f"Fix: end the file name with {formats}, or give a directory (existing, or ending in /) "
                        f"to write {experiment}.png in.")
    return out


def refuse_directories(paths: list[Path]) -> None:
    """Refuse, before anything is written, image paths that are directories: a plot is written whole or not at all,
    and so is the set of plots one command writes, as far as can be known beforehand."""
    for path in paths:
        if path.is_dir():
            raise UserError(f"cannot write {path}: it is a directory.\nFix: move it away, or choose another path "
                            "with --out.")


def pyplot() -> Any:
    """matplotlib.pyplot, drawing without a display; imported when a plot is made, as it is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(figure: Any, path: Path) -> Path:
    """Lay the figure out (unless it has a layout engine of its own), write it to `path` whole or not at all (into a
    hidden file beside it, renamed to `path` when done) and close it. Returns `path`."""
    try:
        if figure.get_layout_engine() is None:
            figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as partial:
            figure.savefig(partial, format=path.suffix.lower().removeprefix("."))
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        pyplot().close(figure)
    return path


@dataclass
class Curve:
    """One certified config's certificates, as a curve of certified accuracy against radius draws them."""

    aggregate: Aggregate
    radii: list[float]
    correct: list[int]
    sort_key: tuple[Any, ...] = ()  # the report's order of the config's hyperparameters within its method


# Matplotlib's ten default colours, then the same ten dashed, dotted, ..., then with markers: no two curves of a
# panel look alike up to 200 of them.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = (None, "o", "s", "^", "x")
LEGEND_ROWS = 30  # legend entries per column
LARGEST_AXIS_LIMIT = 1e307


def plot_experiment(store: Store, experiment: str, out: Path) -> tuple[Path, str | None]:
    """Certified accuracy against radius for every config of an experiment, one image (see `plot_file`); the path
    written, and what is missing while the experiment's summaries are provisional (see Summaries)."""
    path = plot_file(out, experiment)
    with store.read_session() as session:
        summaries = summaries_of(session, experiment)
        settings = [setting_of(session, aggregate.certify_key) for aggregate in summaries.aggregates]
        certificates: dict[str, tuple[list[float], list[int]]] = {
            aggregate.certify_key: ([], []) for aggregate in summaries.aggregates}
        for key, radius, correct in session.execute(
                select(Certificate.job_key, Certificate.radius, Certificate.correct)
                .where(Certificate.job_key.in_(list(certificates)))):
            certificates[key][0].append(radius)
            certificates[key][1].append(correct)
    _, sort_keys = _hyperparameter_summaries(settings)
    curves = [Curve(aggregate, *certificates[aggregate.certify_key], sort_key=sort_key)
              for aggregate, sort_key in zip(summaries.aggregates, sort_keys)]
    return save_plot(certified_accuracy_figure(experiment, curves), path), summaries.provisional


def certified_accuracy_figure(experiment: str, curves: list[Curve]) -> Any:
    """One panel per sigma, as the paper's tables group their rows, each with its configs in the report's order and
    its legend beside it, where it covers no curve however many configs there are."""
    ordered = sorted(curves, key=lambda curve: (curve.aggregate.sigma, *_method_order(curve.aggregate.method),
                                                curve.sort_key, natural_order(curve.aggregate.config_name)))
    panels: dict[float, list[Curve]] = {}
    for curve in ordered:
        panels.setdefault(curve.aggregate.sigma, []).append(curve)
    labels = {id(curve): f"{curve.aggregate.config_name} (ACR {curve.aggregate.acr:.3f})" for curve in curves}
    figure, axes_column = sigma_panels([[labels[id(curve)] for curve in panel] for panel in panels.values()])
    for (sigma, panel), axes in zip(panels.items(), axes_column):
        max_radius = max((max(curve.radii, default=0.0) for curve in panel), default=0.0) or 1.0
        # A margin past the largest radius; an imported log's nonsense radius near the largest float is cut where
        # matplotlib's ticks would overflow.
        upper = min(max_radius * 1.05, LARGEST_AXIS_LIMIT)
        grid = [upper * (step / 400) for step in range(401)]
        for position, curve in enumerate(panel):
            marker, style = divmod(position // 10, len(LINE_STYLES))
            axes.plot(grid, certified_accuracy_curve(curve.radii, curve.correct, grid), label=labels[id(curve)],
                      color=f"C{position % 10}", linestyle=LINE_STYLES[style], marker=MARKERS[marker % len(MARKERS)],
                      markevery=40, markersize=4)
        axes.set_xlabel("radius (L2)")
        axes.set_ylabel("certified accuracy")
        axes.set_ylim(0, 1)
        axes.set_xlim(0, grid[-1])
        finish_sigma_panel(axes, sigma)
    figure.suptitle(f"{experiment}: approximate certified accuracy")
    return figure


def sigma_panels(legend_labels: list[list[str]]) -> tuple[Any, list[Any]]:
    """A figure of one panel per sigma, one above the other, each given room on its right for a legend of its
    `legend_labels`, where it covers nothing however many there are; for the plots of `smx plot`."""
    heights = [max(3.2, 0.19 * min(len(labels), LEGEND_ROWS) + 1.0) for labels in legend_labels]
    # Room for the widest panel's legend beside a plot 6 inches wide: about 0.065 inch per character at size 8.
    legend_width = max(math.ceil(len(labels) / LEGEND_ROWS) * (0.7 + 0.065 * max(map(len, labels)))
                       for labels in legend_labels)
    figure, axes_column = pyplot().subplots(len(legend_labels), 1, figsize=(6 + legend_width, sum(heights) + 0.4),
                                            dpi=120, squeeze=False, height_ratios=heights, layout="constrained")
    return figure, [axes for (axes,) in axes_column]


def finish_sigma_panel(axes: Any, sigma: float, key: Sequence[Any] = ()) -> None:
    """Title, grid and legend of one sigma's panel (see sigma_panels): its labelled artists, then `key`, entries
    that explain a look all its configs share."""
    handles = [*axes.get_legend_handles_labels()[0], *key]
    axes.set_title(f"σ = {sigma:g}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False,
                ncols=math.ceil(len(handles) / LEGEND_ROWS))


def natural_order(name: str) -> tuple[tuple[int, float | str], ...]:
    """Orders names as a reader does: "eta2" before "eta10", "lbd0.125" before "lbd0.5"."""
    return tuple((0, float(part)) if part[0].isdigit() else (1, part)
                 for part in re.split(r"(\d+(?:\.\d+)?)", name) if part)


# ---- `smx report`: an experiment's table in the paper's layout, optionally beside the published numbers ----

REPORT_FORMATS = ("text", "md", "latex")
COMPARE_CHOICES = ("paper",)
# The paper's order of methods within a sigma; methods it does not have come after them.
METHOD_ORDER = ("gaussian", "stability", "smoothadv", "macer", "consistency", "smoothmix")
# Always shown in a row's hyperparameter summary: they tell the paper's SmoothMix rows apart.
KEY_PARAMS = {"smoothmix": ("eta", "mix_step")}
MISSING = "-"


@dataclass
class ReportRow:
    config: str
    method: str
    sigma: float
    hyperparameters: str  # "eta=1, mix_step=1": key parameters and those that differ between the method's rows
    acr: float
    certified_accuracy: dict[float, float]  # radius -> fraction
    published: PublishedRow | None  # set when comparing with the paper and the setting is published
    # Where a published row is set: how this config was trained or certified otherwise than the paper's ("epochs = 10,
    # 200 images, n = 1,000"), or "" where it was not, as far as the store knows (an imported log records neither
    # its architecture and schedule nor its n and alpha).
    protocol_difference: str = ""
    # Where no row is set though the paper has rows of the config's dataset, method and sigma: the nearest of them
    # and what keeps it from matching ("Table 2 'SmoothMix (eta=5)': steps = 2 (paper: 4)").
    nearest: str = ""


@dataclass
class ExperimentReport:
    experiment: str
    radii: list[float]  # the radius columns
    rows: list[ReportRow]  # by sigma, then method in the paper's order, then hyperparameters
    compared: bool  # with the paper
    provisional: str | None = None  # see Summaries

    @property
    def protocol_note(self) -> str | None:
        """Which compared configs were trained or certified otherwise than the paper's rows, whose numbers they then
        only approximate; None when every one was trained and certified as the paper's were, as far as the store
        knows."""
        different = [f"{row.config} ({row.protocol_difference})" for row in self.rows if row.protocol_difference]
        if not different:
            return None
        paper = published_protocol()
        return (f"trained or certified otherwise than the paper (the architecture of its table, the training "
                f"recipe of its run; {paper['test_images']:,} test images, n = {paper['n']:,}, alpha = "
                f"{paper['alpha']:g}), so ours - paper is only indicative: {'; '.join(different)}.")

    @property
    def unmatched_note(self) -> str | None:
        """Which compared configs match no published row though the paper has their dataset, method and sigma, and
        the nearest row each would match with other hyperparameters (an import's unstated ones are smx's defaults)."""
        nearest = [f"{row.config} (nearest: {row.nearest})" for row in self.rows if row.nearest]
        if not nearest:
            return None
        return f"no published row matches these configs' hyperparameters: {'; '.join(nearest)}."

    def notes(self) -> list[str]:
        """What makes the table partial (provisional) or its comparison indicative or partial, if anything."""
        return [note for note in (self.provisional, self.protocol_note, self.unmatched_note) if note]


def _value_text(value: Any) -> str:
    return "none" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _hyperparameter_summaries(settings: list[Setting | None]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Per row, the summary text and a sort key: the method's key parameters and those that vary in the report."""
    resolved = [setting.resolved_params() if setting else {} for setting in settings]
    shown: dict[str, list[str]] = {}
    for method in {setting.method for setting in settings if setting}:
        peers = [params for setting, params in zip(settings, resolved) if setting and setting.method == method]
        shown[method] = [key for key in peers[0] if key in KEY_PARAMS.get(method, ())
                         or any(peer.get(key) != peers[0][key] for peer in peers)]
    texts, sort_keys = [], []
    for setting, params in zip(settings, resolved):
        keys = shown.get(setting.method, []) if setting else []
        # Rows are grouped by the training sigma: a model certified at another one says so.
        certified_at = [f"certify sigma={_value_text(setting.certify_sigma)}"] \
            if setting and setting.certify_sigma != setting.sigma else []
        texts.append(", ".join([*certified_at, *(f"{key}={_value_text(params[key])}" for key in keys)]))
        # None (an unbounded max_norm) after every number, as in the paper's ablation.
        sort_keys.append(tuple((params[key] is None, params[key] if params[key] is not None else 0) for key in keys))
    return texts, sort_keys


def _report_radii(rows: list[ReportRow]) -> list[float]:
    """0.00, 0.25, ... up to 4 sigma_max (CERTIFY cannot certify much past 3.8 sigma), or further while some row is
    still certified, never past the grid of the results view; and every radius the spec's [report] radii added."""
    certified = [radius for row in rows for radius, accuracy in row.certified_accuracy.items() if accuracy > 0]
    last = max([4 * max(row.sigma for row in rows), *certified])
    grid = {round(radius, RADIUS_DECIMALS) for radius in DEFAULT_RADII}
    requested = {radius for row in rows for radius in row.certified_accuracy} - grid
    return sorted({radius for radius in grid if radius <= last + RADIUS_TOLERANCE} | requested)


# A provisional summary by (aggregate job, certify job), with the stamp of the certificates it was made from.
SummaryCache = dict[tuple[str, str], tuple[CertificatesStamp, Aggregate]]


@dataclass
class Summaries:
    """An experiment's summaries: those its aggregate job stored, or, until that job is done, summaries of the
    configs certified so far, made here the way it makes them (then `provisional` says which are missing)."""

    aggregates: list[Aggregate]
    provisional: str | None = None


@dataclass
class PlannedConfig:
    """A config of an experiment's current plan, as its aggregate job's inputs list it."""

    aggregate: Job  # one aggregate job for a submitted spec, one per imported log
    entry: dict[str, Any]  # name, certify_key, method, sigma and swept values
    certify_status: str  # of its certify job
    certify_stamp: CertificatesStamp

    @property
    def certified(self) -> bool:
        return self.certify_status == "done"


def plan_configs(session: Session, experiment: str) -> list[PlannedConfig]:
    """Each config of the experiment's current plan, with the status of its certify job."""
    aggregates = session.scalars(
        select(Job).join(ExperimentJob, ExperimentJob.job_key == Job.key)
        .join(Experiment, Experiment.id == ExperimentJob.experiment_id)
        .where(Experiment.name == experiment, Job.kind == "aggregate").order_by(Job.key)).all()
    entries = [(aggregate, entry) for aggregate in aggregates for entry in aggregate.config["configs"]]
    certify_jobs = {key: (status, (attempts, finished_at)) for key, status, attempts, finished_at in session.execute(
        select(Job.key, Job.status, Job.attempts, Job.finished_at)
        .where(Job.key.in_({entry["certify_key"] for _, entry in entries})))}
    return [PlannedConfig(aggregate, entry, *certify_jobs[entry["certify_key"]]) for aggregate, entry in entries]


def summaries_of(session: Session, experiment: str, cache: SummaryCache | None = None) -> Summaries:
    """The experiment's current summaries; an error that says why when no config is certified yet. `cache`: kept by
    a caller that asks again and again (the TUI), so that each provisional summary reads its certificates once."""
    aggregates = aggregates_of(session, experiment)
    if aggregates:
        return Summaries(aggregates)
    configs = plan_configs(session, experiment)
    cache = {} if cache is None else cache
    certified = [_provisional_summary(session, experiment, config, cache) for config in configs if config.certified]
    if certified:
        waiting = [f"{config.entry['name']} ({config.certify_status})" for config in configs
                   if not config.certified]
        note = (f"provisional: {experiment}'s aggregate job is not done; {len(certified)} of {len(configs)} config(s) "
                "certified so far" + (f", not yet {', '.join(waiting)}" if waiting else "") + ".")
        return Summaries(sorted(certified, key=lambda aggregate: aggregate.config_name), note)
    require_experiment(session, experiment)
    jobs = jobs_view(session, experiment)
    counts = {status: sum(job.status == status for job in jobs) for status in ("running", "pending", "failed",
                                                                                "cancelled")}
    states = ", ".join(f"{count} {status}" for status, count in counts.items() if count) or "none unfinished"
    if counts["running"]:
        fix = f"wait for its running jobs (`smx status {experiment}`)"
    elif counts["failed"] or counts["cancelled"]:
        fix = f"see why with `smx status {experiment}`, then `smx retry {experiment}` and `smx submit` its spec"
    else:
        fix = "run its jobs: `smx submit` its spec, or `smx worker`"
    raise UserError(f"experiment {experiment!r} has no results yet (its jobs: {states}).\nFix: {fix}.")


def _provisional_summary(session: Session, experiment: str, config: PlannedConfig, cache: SummaryCache) -> Aggregate:
    """The config's summary as its aggregate job will store it, from `cache` while its certify job has not run again
    (an aggregate job's key fixes the config's entry and radii)."""
    cache_key = (config.aggregate.key, config.entry["certify_key"])
    if cache_key not in cache or cache[cache_key][0] != config.certify_stamp:
        summary = summarise_config(config.aggregate.key, experiment, config.entry,
                                   certificate_outcomes(session, config.entry["certify_key"]),
                                   aggregate_radii(config.aggregate.config["radii"]))
        cache[cache_key] = (config.certify_stamp, summary)
    return cache[cache_key][1]


def experiment_report(store: Store, experiment: str, compare_with_paper: bool = False) -> ExperimentReport:
    """The experiment's certified configs in the paper's layout; with `compare_with_paper`, each matched to the
    published row of its setting (dataset, method, sigma and key hyperparameters), where there is one."""
    with store.read_session() as session:
        stored = summaries_of(session, experiment)
        aggregates = stored.aggregates
        settings = [setting_of(session, aggregate.certify_key) for aggregate in aggregates]
        certifications = [session.get(Job, aggregate.certify_key).config.get("certify", {}) if compare_with_paper
                          else {} for aggregate in aggregates]
        accuracies = [{round(item.radius, RADIUS_DECIMALS): item.accuracy for item in aggregate.certified}
                      for aggregate in aggregates]
    summaries, sort_keys = _hyperparameter_summaries(settings)

    def paper_order(item: tuple[Aggregate, Setting | None, dict[float, float], str, tuple[Any, ...], dict]) -> tuple:
        aggregate, _, _, _, parameters_key, _ = item
        return aggregate.sigma, *_method_order(aggregate.method), parameters_key, natural_order(aggregate.config_name)

    ordered = sorted(zip(aggregates, settings, accuracies, summaries, sort_keys, certifications), key=paper_order)
    rows = []
    for aggregate, setting, accuracy, summary, _, certification in ordered:
        published = find_published(setting) if compare_with_paper and setting else None
        nearest = nearest_published(setting) if compare_with_paper and setting and published is None else None
        rows.append(ReportRow(
            config=aggregate.config_name, method=aggregate.method, sigma=aggregate.sigma, hyperparameters=summary,
            acr=aggregate.acr, certified_accuracy=accuracy, published=published,
            protocol_difference=", ".join(protocol_differences(setting, published, aggregate.num_samples,
                                                               certification)) if published and setting else "",
            nearest=f"{nearest[0].table} '{nearest[0].label}': {', '.join(nearest[1])}" if nearest else ""))
    return ExperimentReport(experiment=experiment, radii=_report_radii(rows), rows=rows, compared=compare_with_paper,
                            provisional=stored.provisional)


def _method_order(method: str) -> tuple[int, str]:
    """Where a method's rows go: the paper's order, then the methods it does not have by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)), method


def _accuracy(row: ReportRow, radius: float) -> float | None:
    return row.certified_accuracy.get(round(radius, RADIUS_DECIMALS))


def _fixed(value: float, places: int) -> str:
    """`value` with `places` decimals, a tie rounded away from zero. It is rounded from the value at 9 decimals, so
    that binary error does not decide a tie: 6,395 of 10,000 is 63.95%, but 100 * 0.6395 is 63.9499... ."""
    if not math.isfinite(value):  # an ACR of inf: a log of radii near the largest float, imported with a warning
        return str(value)
    text = f"{value:.9f}"
    # Precision for every digit: the default 28 cannot hold a radius of 1e25 (a log imported with nonsense radii).
    return str(Decimal(text).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP,
                                      context=Context(prec=len(text) + places)))


def _difference(ours: str, paper: str) -> str:
    """The difference of two shown numbers, so that the three lines of a comparison add up as printed."""
    return f"{Decimal(ours) - Decimal(paper):+f}"


@dataclass
class _Line:
    """One line of the table: our row, the published row beside it, or the difference between them."""

    kind: str  # "ours", "paper" or "difference"
    cells: list[str]
    group_start: bool  # the first line of a sigma
    best: bool = False  # our row with the best ACR of its sigma


def _number_text(value: float) -> str:
    """A sigma or a radius: two decimals, as the paper prints them, or as many as the value needs (0.125)."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def _report_lines(report: ExperimentReport, missing: str) -> list[_Line]:
    best_acr: dict[float, float] = {}
    for row in report.rows:
        best_acr[row.sigma] = max(best_acr.get(row.sigma, row.acr), row.acr)
    lines = []
    previous_sigma = None
    for row in report.rows:
        group_start = row.sigma != previous_sigma
        previous_sigma = row.sigma
        ours = [None if value is None else _fixed(100 * value, 1)
                for value in (_accuracy(row, radius) for radius in report.radii)]
        lines.append(_Line("ours", [
            _number_text(row.sigma) if group_start else "", row.config, row.method, row.hyperparameters,
            _fixed(row.acr, 3), *(missing if value is None else value for value in ours),
        ], group_start, best=row.acr == best_acr[row.sigma]))
        published = row.published
        if published is None:
            continue
        theirs = [None if value is None else _fixed(100 * value, 1)
                  for value in (published.accuracy_at(radius) for radius in report.radii)]
        lines.append(_Line("paper", [
            "", f"{published.origin} ({published.table})", published.label, "", _fixed(published.acr, 3),
            *(missing if value is None else value for value in theirs),
        ], False))
        lines.append(_Line("difference", [
            "", "ours - paper", "", "", _difference(_fixed(row.acr, 3), _fixed(published.acr, 3)),
            *(missing if mine is None or paper is None else _difference(mine, paper)
              for mine, paper in zip(ours, theirs)),
        ], False))
    return lines


def _report_header(report: ExperimentReport, sigma: str) -> list[str]:
    return [sigma, "config", "method", "hyperparameters", "ACR", *map(_number_text, report.radii)]


# Columns before this one hold text (left-aligned); from it on, numbers (right-aligned).
_FIRST_NUMBER_COLUMN = 4


def _text_report(report: ExperimentReport) -> str:
    header = _report_header(report, "sigma")
    lines = _report_lines(report, MISSING)
    widths = [max(len(cells[column]) for cells in [header, *(line.cells for line in lines)])
              for column in range(len(header))]

    def aligned(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) if column < _FIRST_NUMBER_COLUMN else cell.rjust(width)
                         for column, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(aligned(["-" * width for width in widths]))
    out = [f"{report.experiment}: ACR and certified accuracy (%) at radius r", aligned(header)]
    for line in lines:
        if line.group_start:
            out.append(rule)
        out.append(aligned(line.cells))
    out.append(rule)
    if report.compared:
        matched = sum(row.published is not None for row in report.rows)
        out.append(f"{matched} of {len(report.rows)} config(s) match a published setting of SmoothMix "
                   "(Jeong et al., NeurIPS 2021); differences are ours - paper.")
    return "\n".join(out) + "\n"


def _markdown_report(report: ExperimentReport) -> str:
    header = _report_header(report, "σ")
    out = ["| " + " | ".join(header) + " |",
           "|" + "---|" * _FIRST_NUMBER_COLUMN + "---:|" * (len(header) - _FIRST_NUMBER_COLUMN)]
    for line in _report_lines(report, MISSING):
        cells = [_markdown_cell(cell) for cell in line.cells]
        if line.best:
            cells[_FIRST_NUMBER_COLUMN] = f"**{cells[_FIRST_NUMBER_COLUMN]}**"
        out.append("| " + " | ".join(cells) + " |")
    # A saved table carries what makes it partial or indicative, which the terminal gets on stderr.
    out += [f"\n*{_markdown_escape(note)}*" for note in report.notes()]
    return "\n".join(out) + "\n"


def _markdown_escape(text: str) -> str:
    return "".join(f"\\{character}" if character in "\\`*_[]<>|" else character for character in text)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(character, character) for character in text)


def _latex_report(report: ExperimentReport) -> str:
    header = _report_header(report, r"$\sigma$")
    out = [r"\begin{tabular}{" + "l" * _FIRST_NUMBER_COLUMN + "r" * (len(header) - _FIRST_NUMBER_COLUMN) + "}",
           r"\hline",
           " & ".join([header[0], *(_latex_escape(cell) for cell in header[1:])]) + r" \\"]
    for line in _report_lines(report, "--"):
        if line.group_start:
            out.append(r"\hline")
        cells = [_latex_escape(cell) for cell in line.cells]
        if line.kind == "difference":
            # A signed number in math mode, so that its minus is a minus sign and not a hyphen.
            cells = cells[:_FIRST_NUMBER_COLUMN] + [cell if cell == "--" else f"${cell}$"
                                                    for cell in cells[_FIRST_NUMBER_COLUMN:]]
        if line.best:
            cells[_FIRST_NUMBER_COLUMN] = rf"\textbf{{{cells[_FIRST_NUMBER_COLUMN]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\hline", r"\end{tabular}"]
    out += [f"% {line}" for note in report.notes() for line in note.splitlines()]
    return "\n".join(out) + "\n"


def render_report(report: ExperimentReport, format: str) -> str:
    return {"text": _text_report, "md": _markdown_report, "latex": _latex_report}[format](report)


ANALYSIS_TITLES = {
    "confidence": "Confidence of the smoothed classifier on inputs attacked by L2 PGD (the paper's Table 1)",
    "mixing_ratio": "Equal-confidence mixing ratios towards the unrestricted adversary (the paper's Figure 3)",
}


def _latex_table(result: QueryResult) -> str:
    out = [r"\begin{tabular}{" + "l" + "r" * (len(result.columns) - 1) + "}", r"\hline",
           " & ".join(_latex_escape(column) for column in result.columns) + r" \\", r"\hline"]
    out += [" & ".join(_latex_escape(format_cell(value)) for value in row) + r" \\" for row in result.rows]
    out += [r"\hline", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def render_analysis(kind: str, result: QueryResult, format: str) -> str:
    """One analysis table after the report, in the report's format."""
    title = ANALYSIS_TITLES.get(kind, kind)
    if format == "latex":
        return f"\n% {title}\n" + _latex_table(result)
    if format == "md":
        return f"\n{title}\n\n" + to_markdown(result)
    return f"\n{title}\n" + _text_table(result)


def _text_table(result: QueryResult) -> str:
    """Aligned plain-text columns, numbers to the right, as in the text report."""
    rows = [[format_cell(value) for value in row] for row in result.rows]
    numeric = [all(isinstance(row[column], (int, float)) or row[column] is None for row in result.rows)
               for column in range(len(result.columns))]
    widths = [max(len(cells[column]) for cells in [result.columns, *rows]) for column in range(len(result.columns))]

    def aligned(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if is_number else cell.ljust(width)
                         for cell, width, is_number in zip(cells, widths, numeric)).rstrip()

    rule = "-" * len(aligned(["-" * width for width in widths]))
    return "\n".join([aligned(list(result.columns)), rule, *(aligned(row) for row in rows), rule]) + "\n"
