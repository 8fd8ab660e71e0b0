"""Screens over the main one: a job in detail, a yes/no question and the key bindings."""

from __future__ import annotations

import json

from rich.json import JSON
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Log, Static

from smx.tui.cells import STATUS_STYLES, describe, duration, job_progress, shown_path
from smx.tui.model import JobDetail, LogUpdate
from smx.tui.messages import ActOnJobs, StoreActionsOffWhenReadOnly
from smx.tui.widgets import MetricsPlot

# The log pane keeps this many lines; older ones scroll away.
LOG_MAX_LINES = 5_000


class JobScreen(StoreActionsOffWhenReadOnly, Screen[None]):
    """One job: what it is and where it stands, its resolved config, its error, its log (followed live) and, for
    a training job, loss and accuracy under noise per epoch."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Retry"),
    ]
    DEFAULT_CSS = """
    JobScreen #job-summary {
        height: auto;
        padding: 0 1;
    }
    JobScreen .box {
        border: round $primary-background-lighten-2;
        border-title-color: $text-muted;
    }
    JobScreen #job-error {
        height: auto;
        max-height: 8;
        border: round $error;
        color: $error;
        display: none;
    }
    JobScreen #job-middle {
        height: 1fr;
    }
    JobScreen #job-config, JobScreen #job-metrics {
        width: 1fr;
    }
    JobScreen #job-metrics {
        display: none;
    }
    JobScreen #job-error.-shown, JobScreen #job-metrics.-shown {
        display: block;
    }
    JobScreen #job-log {
        height: 1fr;
    }
    """

    def __init__(self, job_key: str, experiment: str | None) -> None:
        super().__init__()
        self.job_key = job_key
        self.experiment = experiment  # in focus when the job was opened: it names the job's config
        self.detail: JobDetail | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"job {self.job_key}: loading…", id="job-summary")
        with VerticalScroll(id="job-error"):
            yield Static(id="job-error-text")
        with Horizontal(id="job-middle"):
            with VerticalScroll(id="job-config", classes="box"):
                yield Static(id="job-config-text")
            yield MetricsPlot(id="job-metrics", classes="box")
        yield Log(id="job-log", max_lines=LOG_MAX_LINES, classes="box")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#job-error").border_title = "error"
        self.query_one("#job-config").border_title = "config"
        self.query_one("#job-metrics").border_title = "loss · noisy accuracy (right) per epoch"
        self.query_one("#job-log").border_title = "log"

    def show(self, detail: JobDetail | None, log: LogUpdate | None) -> None:
        if detail is None:
            # Removed (`smx remove`) while on show: cancel and retry have nothing left to act on.
            self.detail = None
            self.query_one("#job-summary", Static).update(f"job {self.job_key} is not in the store.")
            return
        previous, self.detail = self.detail, detail
        self.query_one("#job-summary", Static).update(summary_text(detail, self.experiment))
        if previous is None or previous.config != detail.config:
            self.query_one("#job-config-text", Static).update(JSON(json.dumps(detail.config)))
        if previous is None or previous.error != detail.error:
            error = self.query_one("#job-error", VerticalScroll)
            error.set_class(bool(detail.error), "-shown")
            self.query_one("#job-error-text", Static).update(Text(detail.error or ""))
            error.scroll_end(animate=False)  # the exception that ended the job is at the end
        metrics = self.query_one("#job-metrics", MetricsPlot)
        metrics.set_class(bool(detail.metrics), "-shown")
        if previous is None or previous.metrics != detail.metrics:
            metrics.show_metrics(detail.metrics)
        if log is not None:
            pane = self.query_one("#job-log", Log)
            pane.border_title = Text(f"log {shown_path(log.path)}" if log.path else "log (none yet)")  # not markup
            if log.restart:
                pane.clear()
            pane.write_lines(log.lines)

    def _act(self, verb: str) -> None:
        if self.detail is not None:
            job = self.detail.summary
            self.post_message(ActOnJobs(verb, [job.key], describe(job, self.experiment), job.status))

    def action_cancel(self) -> None:
        self._act("cancel")

    def action_retry(self) -> None:
        self._act("retry")


def summary_text(detail: JobDetail, experiment: str | None) -> Text:
    job = detail.summary
    progress = job_progress(job)
    text = Text.assemble((job.config_label(experiment), "bold"), f" · {job.kind} · ",
                         (job.status, STATUS_STYLES.get(job.status, "")), f" · {progress}\n" if progress else "\n")
    facts = [f"device {job.device}" if job.device else "", f"attempt {job.attempts}",
             f"elapsed {duration(job.elapsed_seconds)}" if job.elapsed_seconds is not None else "",
             f"ETA {duration(job.eta_seconds)}" if job.eta_seconds is not None else "",
             f"experiments {', '.join(job.experiments)}" if job.experiments else ""]
    text.append(" · ".join(fact for fact in facts if fact) + "\n")
    text.append(f"key {job.key}", style="dim")
    checkpoint = detail.final_checkpoint
    if checkpoint:
        whose = "final checkpoint" if checkpoint.job_key == job.key else "uses its training job's final checkpoint"
        text.append(f"\n{whose} (epoch {checkpoint.epoch}) {checkpoint.path}\nsha256 {checkpoint.sha256}")
    elif job.kind == "train":
        text.append("\nno final checkpoint yet", style="dim")
    return text


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; No is the default."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Vertical {
        width: 64;
        max-width: 100%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmScreen Horizontal {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ConfirmScreen Button {
        margin-left: 2;
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, markup=False)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    """Every key binding, by where it works."""

    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "Close")]
    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 76;
        max-width: 100%;
        max-height: 90%;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """`sections`: (where, [(keys, what they do)])."""
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for where, bindings in self.sections:
            table.add_row(Text(where, style="bold underline"), "")
            for keys, what in bindings:
                table.add_row(keys, what)
        with VerticalScroll() as scroll:
            scroll.border_title = "keys · escape closes"
            yield Static(table)
