"""`smx tui`: experiments, jobs, results and curves of a store, refreshed live, in the terminal.

The app owns the store reader, the experiment in focus and the refresh loop. Every read of the store happens in
a worker thread (`reload`), which hands a `Snapshot` back to the UI thread; panes and screens only display it
and post messages (smx/tui/messages.py) when the user asks for something.

SQLAlchemy, NumPy, the data layer and the published numbers (smx.reference) are imported by the first read, in its
worker thread, so that the first frame does not wait for them (imports are slow on the network file systems of many
GPU servers).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Footer, SelectionList, Static, TabbedContent, TabPane

from smx.db.location import check_location
from smx.errors import UserError
from smx.tui.cells import shown_path
from smx.tui.messages import ACTIONABLE, STORE_ACTIONS, ActOnJobs, ExportResults, FocusExperiment, OpenJob
from smx.tui.model import Clock, LoadRequest, Snapshot
from smx.tui.panes import CurvesPane, ExperimentsPane, ExperimentsTable, JobsPane, JobsTable, ResultsPane
from smx.tui.screens import ConfirmScreen, HelpScreen, JobScreen
from smx.tui.widgets import LiveTable

if TYPE_CHECKING:
    from smx.tui.data import StoreReader

REFRESH_SECONDS = 1.0
START_COMMAND = "smx submit experiments/quickstart.toml"


def welcome_text(snapshot: Snapshot) -> str:
    where = shown_path(snapshot.root)
    if snapshot.problem:
        # Starting an experiment would not help: the problem's own text says what would.
        return (f"The store in {where}/ cannot be read:\n{snapshot.problem}\n\n"
                "This screen keeps trying, and shows the experiments as soon as the store can be read.")
    if not snapshot.found:
        state = f"There is no smx store in {where}/ yet."
    else:
        state = f"The store in {where}/ has no experiments yet."
    return (f"{state}\n\nStart an experiment with\n\n    {START_COMMAND}\n\n"
            "or point --store / SMX_STORE at an existing store.\n"
            "This screen keeps looking, and shows the experiments as soon as there are some.")


def status_line(snapshot: Snapshot, focus: str | None, read_only: bool) -> Text:
    running = sum(job.status == "running" for job in snapshot.jobs)
    failed = sum(job.status == "failed" for job in snapshot.jobs)
    parts = [Text.assemble(("smx ", "bold"), shown_path(snapshot.root)),
             Text(f"{len(snapshot.jobs)} jobs" if snapshot.found else "store unreadable" if snapshot.problem
                  else "no store yet")]
    if running:
        parts.append(Text(f"{running} running", "cyan"))
    if failed:
        parts.append(Text(f"{failed} failed", "red"))
    if focus:
        parts.append(Text.assemble("focus ", (focus, "bold")))
    if read_only:
        parts.append(Text("read-only", "yellow"))
    if snapshot.problem:
        parts.append(Text(f"store error: {snapshot.problem}", "red"))
    return Text(" · ").join(parts)


class MainScreen(Screen[None]):
    """The tabs, or how to start when there is nothing to show yet."""

    # Nothing takes focus while the welcome is on show, so the footer lists only what works there.
    AUTO_FOCUS = ""
    BINDINGS = [
        Binding("1", "show_tab('experiments')", "Experiments", show=False),
        Binding("2", "show_tab('jobs')", "Jobs", show=False),
        Binding("3", "show_tab('results')", "Results", show=False),
        Binding("4", "show_tab('curves')", "Curves", show=False),
    ]
    DEFAULT_CSS = """
    MainScreen #status-bar {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    MainScreen #welcome {
        padding: 2 4;
    }
    MainScreen TabbedContent, MainScreen ContentSwitcher {
        height: 1fr;
    }
    MainScreen TabPane {
        height: 1fr;
        padding: 0;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="status-bar")
        yield Static("reading the store…", id="welcome", markup=False)
        with TabbedContent(id="tabs"):
            with TabPane("1 Experiments", id="experiments"):
                yield ExperimentsPane()
            with TabPane("2 Jobs", id="jobs"):
                yield JobsPane()
            with TabPane("3 Results", id="results"):
                yield ResultsPane()
            with TabPane("4 Curves", id="curves"):
                yield CurvesPane()
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(TabbedContent).display = False

    @property
    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active

    def show(self, snapshot: Snapshot, request: LoadRequest, read_only: bool) -> None:
        self.query_one("#status-bar", Static).update(status_line(snapshot, request.experiment, read_only))
        tabs = self.query_one(TabbedContent)
        welcome = self.query_one("#welcome", Static)
        if not (snapshot.experiments or snapshot.jobs):
            if not (tabs.display and snapshot.problem):  # a passing read error keeps the data on show
                tabs.display, welcome.display = False, True
                welcome.update(welcome_text(snapshot))
            return
        names = [experiment.name for experiment in snapshot.experiments]
        self.query_one(ExperimentsPane).show(snapshot.experiments, request.experiment)
        self.query_one(JobsPane).show(snapshot.jobs, names, request.experiment)
        if request.results:
            self.query_one(ResultsPane).show(snapshot.results)
        if request.curves:
            self.query_one(CurvesPane).show(snapshot.curves)
        if not tabs.display:
            tabs.display, welcome.display = True, False
            self.focus_tab()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While the welcome is on show the tabs are hidden: a tab chosen then would only surprise once data arrives.
        return action != "show_tab" or self.query_one(TabbedContent).display

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content.display:
            self.focus_tab()
        self.app.reload()  # results and curves are only read while their tab is on show

    def focus_tab(self) -> None:
        pane = self.query_one(f"TabPane#{self.active_tab}", TabPane)
        pane.query(f"{LiveTable.__name__}, {SelectionList.__name__}").first().focus()


class SmxApp(App[None]):
    """The terminal UI of an smx store. `read_only` refuses every action that would change the store."""

    TITLE = "smx"
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, location: str | None = None, *, read_only: bool = False, clock: Clock | None = None,
                 compare_with_paper: bool = False, refresh_seconds: float = REFRESH_SECONDS) -> None:
        """`clock` (UTC, naive) times running jobs; `compare_with_paper` adds a column of the ACR that the SmoothMix
        paper publishes for each result of a published setting.

        A location that can never hold a store (a regular file, a malformed URL) raises StoreError here, as every
        other command does, rather than showing a screen that waits for a store to appear there."""
        check_location(location)
        super().__init__()
        self.location = location
        self.clock = clock
        self.compare_with_paper = compare_with_paper
        self.reader: StoreReader | None = None  # made by the first read
        self.read_only = read_only
        self.refresh_seconds = refresh_seconds
        self.experiment: str | None = None  # focus of every tab; None: all experiments
        self.snapshot: Snapshot | None = None
        self.main = MainScreen()
        self._loading = False
        self._reload_again = False

    def get_default_screen(self) -> MainScreen:
        return self.main

    def on_ready(self) -> None:
        self.set_interval(self.refresh_seconds, self.reload)
        self.reload()

    def reload(self) -> None:
        """Read the store again in a worker thread. Asked while a read runs, another follows it."""
        if not self.is_running:  # a read or an action that ends while the app closes
            return
        if self._loading:
            self._reload_again = True
            return
        self._loading = True
        job_screen = self._job_screen()
        tab = self.main.active_tab
        self._load(LoadRequest(experiment=self.experiment, job_key=job_screen.job_key if job_screen else None,
                               results=tab == "results", curves=tab == "curves"))

    @work(thread=True, group="load")
    def _load(self, request: LoadRequest) -> None:
        if self.reader is None:
            from smx.tui.data import StoreReader

            published_acr = None
            if self.compare_with_paper:
                from smx.reference import PaperAcr

                published_acr = PaperAcr(self.location)
            self.reader = StoreReader(self.location, clock=self.clock, published_acr=published_acr)
        snapshot = self.reader.load(request)
        self.call_from_thread(self._show, request, snapshot)

    def _show(self, request: LoadRequest, snapshot: Snapshot) -> None:
        self._loading = False
        if not self.is_running:  # the read ended while the app closes its screens
            return
        self.snapshot = snapshot
        if (request.experiment is not None and request.experiment == self.experiment and snapshot.found
                and snapshot.problem is None
                and request.experiment not in {experiment.name for experiment in snapshot.experiments}):
            # Removed (`smx remove`) while in focus: every tab goes back to all experiments, and says why.
            self.experiment = None
            self.tell(f"experiment {request.experiment} is no longer in the store; showing all experiments.",
                      "warning")
            request = dataclasses.replace(request, experiment=None)
        self.main.show(snapshot, request, self.read_only)
        job_screen = self._job_screen()
        if job_screen is not None and job_screen.job_key == request.job_key:
            job_screen.show(snapshot.job, snapshot.log)
        if self._reload_again:
            self._reload_again = False
            self.reload()

    def _job_screen(self) -> JobScreen | None:
        # A question asked over the job screen must not stop its log from following.
        return next((screen for screen in reversed(self.screen_stack) if isinstance(screen, JobScreen)), None)

    def on_focus_experiment(self, message: FocusExperiment) -> None:
        self.experiment = message.experiment
        if self.snapshot is not None:  # filter what is on show now; results and curves follow with the reload
            self.main.show(self.snapshot, LoadRequest(experiment=self.experiment), self.read_only)
        if message.show_jobs:
            self.main.action_show_tab("jobs")
        self.reload()

    def on_open_job(self, message: OpenJob) -> None:
        self.push_screen(JobScreen(message.job_key, self.experiment))
        self.reload()

    def tell(self, message: str, severity: SeverityLevel = "information") -> None:
        """Notify, showing the message as it is (names and errors may hold brackets that are not markup)."""
        if self.is_running:  # an action may end while the app closes
            self.notify(message, severity=severity, markup=False)

    def _refuse_when_read_only(self) -> bool:
        if self.read_only:
            self.tell("read-only: this session was started with --read-only", "warning")
        return self.read_only

    def on_act_on_jobs(self, message: ActOnJobs) -> None:
        if self._refuse_when_read_only():
            return
        if message.status is not None and message.status not in ACTIONABLE[message.verb]:
            self.tell(f"cannot {message.verb} a {message.status} job: only {' or '.join(ACTIONABLE[message.verb])} "
                      "jobs can be", "warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._change_jobs(message.verb, message.targets)

        self.push_screen(ConfirmScreen(f"{message.verb.capitalize()} {message.description}?"), answered)

    @work(thread=True, group="actions")
    def _change_jobs(self, verb: str, targets: list[str]) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from smx.scheduler import queue

        assert self.reader is not None  # an action acts on a row that a read has shown
        try:
            store = self.reader.store()
            if verb == "cancel":
                cancellation = queue.cancel_with_slurm_jobs(store, targets)
                # Jobs left alone because other experiments need them are news too: the summary names them.
                answered, done = bool(cancellation.keys or cancellation.shared), cancellation.summary
            else:
                keys = queue.retry(store, targets)
                answered = bool(keys)
                done = f"{len(keys)} job(s) queued again (a running worker or `smx worker` runs them)"
        except UserError as error:
            self.call_from_thread(self.tell, error.message, "error")
            return
        except SQLAlchemyError as error:  # e.g. the database stayed locked past the busy timeout
            self.call_from_thread(self.tell, f"the store refused the change: {error}", "error")
            return
        if answered:
            self.call_from_thread(self.tell, done)
        else:
            which = " or ".join(ACTIONABLE[verb])
            self.call_from_thread(self.tell, f"nothing to {verb}: only {which} jobs can be", "warning")
        self.call_from_thread(self.reload)

    def on_export_results(self, message: ExportResults) -> None:
        if not self._refuse_when_read_only():
            self._export(message.experiment)

    @work(thread=True, group="actions")
    def _export(self, experiment: str) -> None:
        from smx.report import experiment_results, to_csv

        assert self.reader is not None  # an action acts on a row that a read has shown
        try:
            store = self.reader.store()
            results = experiment_results(store, experiment, required=True)
            path = store.root / "exports" / f"{experiment}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(to_csv(results))
        except UserError as error:
            self.call_from_thread(self.tell, error.message, "error")
        except OSError as error:
            self.call_from_thread(self.tell, f"cannot write the export: {error}", "error")
        else:
            self.call_from_thread(self.tell, f"exported {len(results.rows)} row(s) of {experiment} to {path}")

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_sections()))

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The key bindings of each place, read from the bindings themselves so the help never goes stale."""

        def keys(*owners: type) -> list[tuple[str, str]]:
            return [(self.get_key_display(binding), described(binding))
                    for owner in owners for binding in owner.BINDINGS if isinstance(binding, Binding)]

        def described(binding: Binding) -> str:
            off = self.read_only and binding.action in STORE_ACTIONS
            return binding.description + (" (off: read-only)" if off else "")

        return [
            ("everywhere", keys(SmxApp, MainScreen)),
            ("tables", [("↑ ↓ PgUp PgDn Ctrl+Home Ctrl+End", "move"), ("← → Home End", "scroll sideways"),
                        *keys(LiveTable)]),
            ("experiments", keys(ExperimentsTable, ExperimentsPane)),
            ("jobs", keys(JobsTable, JobsPane)),
            ("results", keys(ResultsPane)),
            ("curves", [("space", "tick or untick a config"), *keys(CurvesPane)]),
            ("job", keys(JobScreen)),
        ]
