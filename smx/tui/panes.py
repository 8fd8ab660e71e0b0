"""The main screen's tabs: experiments, jobs, and the results and curves of the experiment in focus."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, SelectionList, Static
from textual.widgets.selection_list import Selection

from smx.db.queries import PROVISIONAL_MARK
from smx.tui.cells import (EXPERIMENT_COLUMNS, JOB_COLUMNS, describe, experiment_cells, job_cells,
                           result_cells, result_label, results_caption, short_config_names)
from smx.tui.messages import (ACTIONABLE, ActOnJobs, ExportResults, FocusExperiment, OpenJob,
                              StoreActionsOffWhenReadOnly)
from smx.tui.model import CurveSet, JobSummary, ResultsTable
from smx.tui.widgets import CurvesPlot, LiveTable

if TYPE_CHECKING:
    from smx.db.queries import ExperimentOverview


class Caption(Static):
    """One line above a table: what it shows, its filters and its order."""

    DEFAULT_CSS = """
    Caption {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False)  # names and filter text are shown as they are


def _next(options: list[str | None], current: str | None) -> str | None:
    return options[(options.index(current) + 1) % len(options)] if current in options else options[0]


def _sorted(table: LiveTable) -> str:
    return f" · sorted by {table.sort_title}" if table.sort_title else ""


class ExperimentsTable(LiveTable):
    BINDINGS = [Binding("enter", "select_cursor", "Focus")]


class ExperimentsPane(StoreActionsOffWhenReadOnly, Vertical):
    """Every experiment with its jobs by status and its best ACR; acting on one acts on all of its jobs."""

    BINDINGS = [
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("x", "export", "Export CSV"),
    ]

    def compose(self) -> ComposeResult:
        yield Caption(id="experiments-caption")
        yield ExperimentsTable(EXPERIMENT_COLUMNS, id="experiments-table")

    @property
    def table(self) -> ExperimentsTable:
        return self.query_one(ExperimentsTable)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._experiments: dict[str, ExperimentOverview] = {}
        self._focus: str | None = None

    def show(self, experiments: list[ExperimentOverview], focus: str | None) -> None:
        self.table.show_rows({experiment.name: experiment_cells(experiment) for experiment in experiments})
        self._experiments, self._focus = {experiment.name: experiment for experiment in experiments}, focus
        self._caption()

    def _caption(self) -> None:
        focused = f"focus: {self._focus}" if self._focus else "Enter shows one's jobs, results and curves"
        # One line: the caption's whole height.
        marked = (f" · {PROVISIONAL_MARK}: ACR of the configs certified so far"
                  if any(experiment.best_acr_provisional for experiment in self._experiments.values()) else "")
        self.query_one(Caption).update(f"{len(self._experiments)} experiment(s) · {focused}{_sorted(self.table)}"
                                       f"{marked}")

    def on_live_table_sort_changed(self) -> None:
        self._caption()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(FocusExperiment(event.row_key.value, show_jobs=True))

    def _act(self, verb: str) -> None:
        experiment = self.table.selected_key
        if experiment is None:
            return
        statuses = ACTIONABLE[verb]
        overview = self._experiments.get(experiment)
        if overview is not None and not any(overview.counts.get(status) for status in statuses):
            # As the jobs tab refuses a job it cannot act on: no question whose answer does nothing.
            self.app.notify(f"nothing to {verb} in {experiment}: none of its jobs is {' or '.join(statuses)}.",
                            severity="warning", markup=False)
            return
        description = f"the {' and '.join(statuses)} jobs of experiment {experiment}"
        self.post_message(ActOnJobs(verb, [experiment], description))

    def action_cancel(self) -> None:
        self._act("cancel")

    def action_retry(self) -> None:
        self._act("retry")

    def action_export(self) -> None:
        if self.table.selected_key is not None:
            self.post_message(ExportResults(self.table.selected_key))


class JobsTable(LiveTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open")]


class JobsPane(StoreActionsOffWhenReadOnly, Vertical):
    """Every job, or the focused experiment's, filtered by status, kind and text."""

    BINDINGS = [
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("f", "cycle_status", "Status"),
        Binding("k", "cycle_kind", "Kind"),
        Binding("e", "cycle_experiment", "Experiment"),
        Binding("slash", "search", "Filter"),
        Binding("escape", "clear_search", "Clear filter", show=False),
    ]
    DEFAULT_CSS = """
    JobsPane #jobs-filter {
        display: none;
        border: none;
        height: 1;
        padding: 0 1;
    }
    JobsPane #jobs-filter.-shown {
        display: block;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.status: str | None = None
        self.kind: str | None = None
        self.text = ""
        self.experiment: str | None = None
        self._experiments: list[str] = []
        self._jobs: list[JobSummary] = []

    def compose(self) -> ComposeResult:
        yield Caption(id="jobs-caption")
        yield JobsTable(JOB_COLUMNS, id="jobs-table")
        yield Input(placeholder="filter: part of a config, kind, status, device or error", id="jobs-filter")

    @property
    def table(self) -> JobsTable:
        return self.query_one(JobsTable)

    def show(self, jobs: list[JobSummary], experiments: list[str], focus: str | None) -> None:
        self._jobs, self._experiments, self.experiment = jobs, experiments, focus
        self._show()

    def _matches(self, job: JobSummary) -> bool:
        if self.experiment is not None and self.experiment not in job.experiments:
            return False
        if (self.status and job.status != self.status) or (self.kind and job.kind != self.kind):
            return False
        if self.text:
            # Searched as shown: by the config's name in the experiment in focus (jobs.name holds its name in
            # whichever experiment created the job).
            config = job.config_label(self.experiment)
            haystack = " ".join((job.key, f"{job.kind}/{config}", job.status, job.device or "",
                                 job.error_line)).lower()
            return self.text.lower() in haystack
        return True

    def _show(self) -> None:
        self.table.show_rows({job.key: job_cells(job, self.experiment) for job in self._jobs if self._matches(job)})
        self._caption()

    def _caption(self) -> None:
        filters = [self.experiment or "all experiments", self.status, self.kind, self.text and f"“{self.text}”"]
        self.query_one(Caption).update(f"{self.table.row_count}/{len(self._jobs)} jobs · "
                                       + " · ".join(part for part in filters if part) + _sorted(self.table))

    def on_live_table_sort_changed(self) -> None:
        self._caption()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenJob(event.row_key.value))

    def action_cycle_status(self) -> None:
        from smx.db.models import JOB_STATUSES  # loaded by the first read; not imported before the first frame

        self.status = _next([None, *JOB_STATUSES], self.status)
        self._show()

    def action_cycle_kind(self) -> None:
        from smx.db.models import JOB_KINDS

        self.kind = _next([None, *JOB_KINDS], self.kind)
        self._show()

    def action_cycle_experiment(self) -> None:
        self.post_message(FocusExperiment(_next([None, *self._experiments], self.experiment)))

    def action_search(self) -> None:
        search = self.query_one("#jobs-filter", Input)
        search.add_class("-shown")
        search.focus()

    def action_clear_search(self) -> None:
        search = self.query_one("#jobs-filter", Input)
        search.value = ""
        search.remove_class("-shown")
        self.text = ""
        self._show()
        self.table.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.text = event.value.strip()
        self._show()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.remove_class("-shown")
        self.table.focus()

    def _act(self, verb: str) -> None:
        job = next((job for job in self._jobs if job.key == self.table.selected_key), None)
        if job is not None:
            self.post_message(ActOnJobs(verb, [job.key], describe(job, self.experiment), job.status))

    def action_cancel(self) -> None:
        self._act("cancel")

    def action_retry(self) -> None:
        self._act("retry")


class ResultsPane(StoreActionsOffWhenReadOnly, Vertical):
    """The focused experiment's `results` rows: one per certified config."""

    BINDINGS = [Binding("x", "export", "Export CSV")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.experiment: str | None = None
        self._what = "loading"

    def compose(self) -> ComposeResult:
        yield Caption(id="results-caption")
        yield LiveTable(id="results-table")

    def on_mount(self) -> None:
        self.table.fixed_columns = 1  # the config's name stays in view while scrolling sideways

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def show(self, results: ResultsTable | None) -> None:
        self.experiment = results.experiment if results else None
        if results is None:
            self.table.show_rows({})
            self._what = "no experiment yet"
        else:
            self.table.set_columns([(column, result_label(column)) for column in results.columns])
            config = results.columns.index("config")
            self.table.show_rows({str(row[config]): result_cells(results.columns, row) for row in results.rows})
            self._what = results_caption(results)
        self._caption()

    def _caption(self) -> None:
        self.query_one(Caption).update(self._what + _sorted(self.table))

    def on_live_table_sort_changed(self) -> None:
        self._caption()

    def action_export(self) -> None:
        if self.experiment is not None:
            self.post_message(ExportResults(self.experiment))


class CurvesPane(Vertical):
    """Certified accuracy against radius for the configs ticked in the list (space ticks, `a` all or none)."""

    BINDINGS = [Binding("a", "toggle_all", "All/none")]
    DEFAULT_CSS = """
    CurvesPane SelectionList {
        width: 36;
        height: 1fr;
    }
    """
    # What the list's width leaves for a name (a longer one is shortened: short_config_names).
    LISTED_NAME_WIDTH = 28
    # A terminal chart with more lines than this is unreadable (and slow to draw): later configs start unticked.
    TICKED_AT_FIRST = 8

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._curves: CurveSet | None = None
        # Per experiment, so that the user's choice survives refreshes and a visit to another experiment.
        self._ticked: dict[str, set[str]] = {}
        self._seen: dict[str, set[str]] = {}

    def compose(self) -> ComposeResult:
        yield Caption(id="curves-caption")
        with Horizontal():
            yield SelectionList[str](id="curves-configs")
            yield CurvesPlot(id="curves-plot")

    @property
    def configs(self) -> SelectionList[str]:
        return self.query_one(SelectionList)

    def show(self, curves: CurveSet | None) -> None:
        if curves == self._curves:
            return
        states = {curve.job_key: "" if curve.status == "done" else f" ({curve.status})"
                  for curve in curves.curves} if curves else {}
        room = self.LISTED_NAME_WIDTH - max(map(len, states.values()), default=0)
        listed = short_config_names([curve.config for curve in curves.curves], room) if curves else {}
        options = [(curve.job_key, listed[curve.config] + states[curve.job_key])
                   for curve in curves.curves] if curves else []
        ticked = self._ticked.setdefault(curves.experiment, set()) if curves else set()
        seen = self._seen.setdefault(curves.experiment, set()) if curves else set()
        for key, _ in options:
            if key not in seen and len(ticked) < self.TICKED_AT_FIRST:
                ticked.add(key)
            seen.add(key)
        shown = [(option.value, str(option.prompt)) for option in self.configs.options]
        # Two experiments may share every certify job, but each has its own ticks.
        same_experiment = (self._curves.experiment if self._curves else None) == (curves.experiment if curves else None)
        if options != shown or not same_experiment:
            highlighted = self.configs.highlighted
            self.configs.clear_options()
            self.configs.add_options(Selection(Text(prompt), key, key in ticked)  # Text: not markup
                                     for key, prompt in options)
            if options:
                # A highlighted option from the start, so the first `space` ticks something.
                self.configs.highlighted = 0 if highlighted is None else min(highlighted, len(options) - 1)
        self._curves = curves
        self._draw()

    def _draw(self) -> None:
        curves = self._curves
        drawn = self.query_one(CurvesPlot).show_curves(curves, self._ticked.get(curves.experiment, set())
                                                        if curves else set())
        if curves is None:
            caption = "no experiment yet"
        elif not curves.curves:
            caption = f"{curves.experiment}: no certify jobs"
        else:
            samples = sum(curve.samples for curve in curves.curves)
            caption = (f"{curves.experiment}: certified accuracy vs radius · {drawn} of {len(curves.curves)} "
                       f"configs · {samples} samples")
        self.query_one(Caption).update(caption)

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        event.stop()
        # The list shows the options of the experiment in self._curves: show() replaces both at once.
        if self._curves is not None:
            self._ticked[self._curves.experiment] = set(self.configs.selected)
        self._draw()

    def action_toggle_all(self) -> None:
        if self.configs.selected:
            self.configs.deselect_all()
        else:
            self.configs.select_all()
