"""What screens and panes ask of the app. The app handles these: it owns the store, the focus and the refresh."""

from __future__ import annotations

from typing import Literal

from textual.message import Message

# The jobs smx.scheduler.queue cancels or retries; asking about any other is pointless.
ACTIONABLE = {"cancel": ("pending", "running"), "retry": ("failed", "cancelled")}
# Actions that write to the store or its files, which `smx tui --read-only` forbids.
STORE_ACTIONS = frozenset({"cancel", "retry", "export"})


class StoreActionsOffWhenReadOnly:
    """For the panes and screens that bind STORE_ACTIONS: in a read-only session their keys show greyed out in the
    footer, and pressing one does nothing."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        read_only = getattr(self.app, "read_only", False)  # type: ignore[attr-defined]
        return None if action in STORE_ACTIONS and read_only else True


class FocusExperiment(Message):
    """Show this experiment (None: all of them) in every tab, and with `show_jobs`, go to its jobs."""

    def __init__(self, experiment: str | None, *, show_jobs: bool = False) -> None:
        super().__init__()
        self.experiment = experiment
        self.show_jobs = show_jobs


class OpenJob(Message):
    def __init__(self, job_key: str) -> None:
        super().__init__()
        self.job_key = job_key


class ActOnJobs(Message):
    """Cancel or retry jobs (after the user confirms): `targets` are job keys or experiment names.

    `status` is the job's when the target is one job, so that what cannot be done is refused without a question.
    """

    def __init__(self, verb: Literal["cancel", "retry"], targets: list[str], description: str,
                 status: str | None = None) -> None:
        super().__init__()
        self.verb = verb
        self.targets = targets
        self.description = description
        self.status = status


class ExportResults(Message):
    def __init__(self, experiment: str) -> None:
        super().__init__()
        self.experiment = experiment
