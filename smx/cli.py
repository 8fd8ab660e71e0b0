"""The smx command line. Nothing here imports torch: jobs that need a model run in their own processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from smx.errors import UserError, failure_summary

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterable

    from smx.db.queries import JobView
    from smx.db.store import Store
    from smx.plan import Plan
    from smx.scheduler.removal import KeptJob
    from smx.spec import SlurmSection

app = typer.Typer(
    name="smx",
    help="Train and certify randomized-smoothing classifiers (SmoothMix and baselines) from TOML experiment specs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
# Into a pipe or a file a message stays one line, whatever its length, for grep and for logs; a terminal wraps it
# at word boundaries.
console.soft_wrap = not console.is_terminal
errors.soft_wrap = not errors.is_terminal

StoreOption = Annotated[
    Optional[str],
    typer.Option("--store", help="Store directory or PostgreSQL URL \\[default: $SMX_STORE or ./store]."),
]
GpusOption = Annotated[str, typer.Option(
    "--gpus", help="GPUs to use: auto, none, a count (2) or indices (0,1; '0,' for index 0 alone).")]
JobsPerGpuOption = Annotated[int, typer.Option("--jobs-per-gpu", min=1, help="Jobs packed on each GPU.")]
# Each CPU job is a process of its own, and past the machine's cores they only share them: a fixed ceiling (not one
# from this machine's core count, since workers on several machines share a store's slot names) that stops a typo
# from starting thousands of processes.
MAX_CPU_JOBS = 256
CpuJobsOption = Annotated[int, typer.Option(
    "--cpu-jobs", min=1, max=MAX_CPU_JOBS,
    help=f"Jobs run at once when there is no GPU, 1 to {MAX_CPU_JOBS} (jobs beyond the CPU cores share them).")]
# `smx submit`'s options that say how this machine runs jobs, by parameter name: Slurm jobs take their GPUs and CPUs
# from [executor.slurm] instead.
LOCAL_EXECUTOR_OPTIONS = {"gpus": "--gpus", "jobs_per_gpu": "--jobs-per-gpu", "cpu_jobs": "--cpu-jobs"}
# While another scheduler holds every slot, `smx submit` follows its jobs and looks this often for a free slot.
SLOT_RETRY_SECONDS = 5.0
# How often `smx submit --executor slurm` looks for jobs that Slurm lost or that wait on a failed parent.
SLURM_RESEND_SECONDS = 30.0
# The exit status of a command stopped by SIGINT, SIGTERM or SIGHUP, as a shell reports one stopped by Ctrl-C
# (128 + SIGINT).
EXIT_INTERRUPTED = 130
# How many running jobs of other experiments `smx status EXPERIMENT` names when its own wait.
OTHER_RUNNING_SHOWN = 5
REQUEUED = "put back in the queue, to resume from the last checkpoint on the next `smx submit` or `smx worker`."


def main() -> None:
    try:
        app()
    except UserError as error:
        errors.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)


def _print_version(asked: bool) -> None:
    if asked:
        from smx import __version__

        console.print(f"smx {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print smx's version and exit.")] = False,
) -> None:
    pass


def _natural_width(table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _print_table(table: Table) -> None:
    """Print a table; to a file or a pipe, whole rows rather than folded into the 80 columns Rich assumes there."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(_natural_width(table), console.width)).print(table)


def _exit_interrupted(note: str) -> NoReturn:
    """End a command that SIGINT, SIGTERM or SIGHUP stopped: `note` says what became of its jobs."""
    console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _job_label(job: JobView, experiment: str | None) -> str:
    """How a listing names a job (a JobView). In one experiment's listing: its kind and the config name this
    experiment gives it, since jobs.name is the name it got in whichever experiment created it. Otherwise that
    stored name."""
    if experiment is None:
        return job.name
    if job.kind == "aggregate":
        # An experiment's aggregate has no config name; an imported log's own aggregate has its config's.
        return "/".join(filter(None, ("aggregate", experiment, job.config_name)))
    return f"{job.kind}/{job.config_name}"


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


@app.command()
def validate(spec_file: Annotated[Path, typer.Argument(help="Experiment spec (TOML).")]) -> None:
    """Check a spec and list the configs it resolves to."""
    from smx.plan import build_plan
    from smx.scheduler.local import missing_data
    from smx.spec import executor_settings, load_spec

    spec = load_spec(spec_file)
    plan = build_plan(spec)
    executor_settings(spec)  # the spec's [executor] merged over the user config's, both checked
    _warn_reduced_precision(plan)
    _warn_large_sigma(spec_file, plan)
    _warn_wasted_settings(spec_file, plan)
    _warn_missing_data(spec_file, missing_data(plan, done=set()))
    console.print(f"[green]ok[/] {escape(str(spec_file))}: experiment [bold]{plan.experiment}[/], "
                  f"{len(plan.configs)} config(s), {len(plan.jobs)} job(s)")
    for config in plan.configs:
        console.print(f"  {config.name}")


def _warn_reduced_precision(plan: Plan) -> None:
    from smx.spec import config_value

    names = [config.name for config in plan.configs if config_value("certify.precision", config.config) != "fp32"]
    if names:
        errors.print(f"[yellow]warning: certify.precision = \"bf16\" in {escape(', '.join(names))}: reduced "
                     "precision can produce false certificates (Voráček & Hein, 2023). Use fp32 for results you "
                     "publish.[/]")


# Inputs lie in [0, 1] and the paper's largest sigma is 1.0: noise several times the whole pixel range is most
# likely a typo (50 for 0.50), and past float32's range it turns every image into infinities.
LARGE_SIGMA = 4.0


def _warn_large_sigma(spec_file: Path, plan: Plan) -> None:
    keys: dict[float, list[str]] = {}
    configs: dict[float, list[str]] = {}
    for config in plan.configs:
        for section in ("train", "certify", "analyze"):
            sigma = config.config.get(section, {}).get("sigma")
            if sigma is not None and sigma > LARGE_SIGMA:
                keys.setdefault(sigma, []).append(f"{section}.sigma")
                configs.setdefault(sigma, []).append(config.name)
    for sigma in keys:
        where = " and ".join(dict.fromkeys(keys[sigma]))
        errors.print(f"warning: {spec_file}: {where} = {sigma:g} in {', '.join(dict.fromkeys(configs[sigma]))}: "
                     f"inputs lie in [0, 1], so this noise is {sigma:g} times the whole pixel range (the paper's "
                     "largest sigma is 1.0). Did you mean a smaller value?", style="yellow", markup=False,
                     highlight=False, soft_wrap=True)


def _warn_wasted_settings(spec_file: Path, plan: Plan) -> None:
    """Settings that make a run say nothing of what it was set up to test, though each is valid on its own."""
    from smx.science.methods.params import METHOD_PARAMS

    problems: dict[str, list[str]] = {}
    for config in plan.configs:
        train, certify = config.config["train"], config.config["certify"]
        # With every one of n draws for the top class, the Clopper-Pearson lower bound on pA is alpha ** (1 / n).
        if certify["alpha"] ** (1 / certify["n"]) < 0.5:
            problems.setdefault(f"certify.n = {certify['n']} with alpha = {certify['alpha']:g} can certify no image "
                                "(even n votes of n give a lower bound on pA under 0.5): every image abstains", []
                                ).append(config.name)
        for wasted in METHOD_PARAMS[train["method"]](**train["params"]).wasted_settings(train["epochs"]):
            problems.setdefault(f"train.{train['method']}.{wasted}", []).append(config.name)
    for problem, names in problems.items():
        errors.print(f"warning: {spec_file}: {problem} (in {', '.join(names)}).", style="yellow", markup=False,
                     highlight=False, soft_wrap=True)


def _warn_missing_data(spec_file: Path, problems: list[str]) -> None:
    for problem in problems:
        errors.print(f"[yellow]warning:[/] {escape(str(spec_file))}: data.root: {escape(problem)}", highlight=False,
                     soft_wrap=True)


def _cancel_dropped_slurm_jobs(store: Store, dropped: list[str]) -> None:
    from smx.scheduler import queue
    from smx.scheduler.slurm import SlurmError

    try:
        slurm_job_ids = queue.cancel_slurm_jobs_of(store, dropped)
    except SlurmError as error:
        # The jobs are cancelled in the store already: their Slurm jobs, when they start, end without running them.
        console.print(f"  [yellow]Their Slurm jobs stay queued until they start and end at once: "
                      f"{escape(str(error))}[/]")
        return
    if slurm_job_ids:
        console.print(f"  Their Slurm jobs were cancelled: {', '.join(slurm_job_ids)}.")


def _print_plan(plan: Plan, states: dict[str, str], retraining: set[str]) -> None:
    table = Table(title=f"{plan.experiment}: {len(plan.jobs)} jobs", title_justify="left")
    for column in ("kind", "name", "key", "state"):
        table.add_column(column)
    for job in plan.jobs:
        state = states.get(job.key)
        label = {"done": "[green]cached[/]", None: "to run"}.get(state, f"in store ({state})")
        if job.key in retraining:
            label = "[yellow]to retrain[/] (checkpoint file gone)"
        table.add_row(job.kind, job.name, job.key[:12], label)
    _print_table(table)


def _print_leaving(leaving: dict[str, Any]) -> None:
    """What a dry run's submission would do to the jobs that the spec no longer plans (its configs taken out or
    changed)."""
    pending = sum(job.status == "pending" for job in leaving.values())
    if pending:
        console.print(f"Submitting would cancel {pending} pending job(s) that the spec no longer plans (configs "
                      "removed or changed).")
    for job in leaving.values():
        if job.status == "running":
            console.print(f"{job.name} ({job.key[:12]}), which the spec no longer plans, is running and would be "
                          "left to finish.")


@app.command()
def submit(
    context: typer.Context,
    spec_file: Annotated[Path, typer.Argument(help="Experiment spec (TOML).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job graph and change nothing.")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Run the scheduler in the background and return.")] = False,
    store: StoreOption = None,
    gpus: GpusOption = "auto",
    jobs_per_gpu: JobsPerGpuOption = 1,
    cpu_jobs: CpuJobsOption = 1,
    executor: Annotated[Optional[str], typer.Option(
        "--executor", help="local or slurm \\[default: the spec's or user config's \\[executor], else local].")] = None,
) -> None:
    """Enqueue an experiment's jobs and run them on this machine's GPUs (or CPU), or send them to Slurm."""
    from smx.db.location import uncreatable_error
    from smx.db.store import NoStoreYet, open_store
    from smx.plan import build_plan
    from smx.scheduler import queue
    from smx.scheduler.local import LocalOptions, missing_data, start_workers
    from smx.scheduler.slots import is_free, make_slots, parse_gpus
    from smx.spec import executor_settings, load_spec
    from smx.tasks.flags import check_job_environment

    if executor not in (None, "local", "slurm"):
        raise UserError(f"unknown --executor {executor!r}.\nFix: use local or slurm.")
    if dry_run and detach:
        raise UserError("--dry-run and --detach cannot be used together: a dry run starts nothing to run in the "
                        "background.\nFix: drop --detach to see the job graph, or --dry-run to run the jobs.")
    spec = load_spec(spec_file)
    plan = build_plan(spec)
    _warn_reduced_precision(plan)
    _warn_large_sigma(spec_file, plan)
    _warn_wasted_settings(spec_file, plan)
    where = executor_settings(spec, executor)
    if where.kind == "slurm":
        _refuse_local_executor_options(context, "--executor slurm" if executor else "[executor] kind = \"slurm\" "
                                       "(in the spec or the user config)")
    options = LocalOptions(gpus=gpus, jobs_per_gpu=jobs_per_gpu, cpu_jobs=cpu_jobs)
    try:
        existing = open_store(store, create=False)
        with existing.read_session() as session:
            name_problem = queue.experiment_name_problem(session, plan.experiment, spec_file.resolve())
            # A submission finds these itself (enqueue); a dry run says what it would do to them.
            leaving = queue.leaving_jobs(session, plan.experiment, [job.key for job in plan.jobs]) if dry_run else {}
        states = queue.job_states(existing, [job.key for job in plan.jobs])
        retraining = queue.to_retrain(existing, plan, states)
        existing.engine.dispose()
        if name_problem and not dry_run:
            raise UserError(name_problem)
        if name_problem:
            errors.print(f"[yellow]warning:[/] {escape(name_problem)}")
    except NoStoreYet:
        if (uncreatable := uncreatable_error(store)) is not None:
            raise uncreatable from None
        states, leaving, retraining = {}, {}, set()
    # Checked here, before a dry run returns, so that it refuses what the submission would.
    gpu_indices = parse_gpus(gpus) if where.kind == "local" else []
    if where.kind == "local" and not dry_run:
        check_job_environment()  # its jobs would otherwise fail one by one on a setting only this machine has
    problems = missing_data(plan, {key for key, status in states.items() if status == "done"})
    if problems and where.kind == "local" and not dry_run:
        raise UserError(f"{spec_file}: data.root: jobs on this machine would not find their data; nothing was "
                        "queued.\n" + "\n".join(problems))
    # Slurm jobs may see other file systems than this machine does.
    _warn_missing_data(spec_file, problems)
    if dry_run:
        _print_plan(plan, states, retraining)
        _print_leaving(leaving)
        return
    if where.kind == "slurm":
        from smx.scheduler.slurm import check_available

        check_available()
    opened = open_store(store)
    slots = make_slots(opened.locks_dir, gpu_indices, jobs_per_gpu, cpu_jobs) if where.kind == "local" else []
    summary = queue.enqueue(opened, plan, spec_file.resolve())
    retrained = retraining & set(summary.done)
    console.print(f"[bold]{plan.experiment}[/]: {summary.total} jobs — {len(summary.new)} new, "
                  f"{len(summary.done) - len(retrained)} cached, "
                  + (f"{len(retrained)} to retrain (checkpoint file gone), " if retrained else "")
                  + f"{len(summary.waiting)} already queued, {len(summary.failed)} failed or cancelled. "
                  f"Store: {escape(opened.display_location)}")
    if summary.failed:
        console.print(f"  [yellow]{len(summary.failed)} job(s) failed or were cancelled earlier; "
                      f"`smx retry {plan.experiment}` runs them again.[/]")
    if summary.dropped:
        console.print(f"  {len(summary.dropped)} pending job(s) that the spec no longer plans (configs removed or "
                      "changed) will not run (cancelled; a spec that plans them again queues them again).")
        _cancel_dropped_slurm_jobs(opened, summary.dropped)
    for key, name in summary.left_running.items():
        console.print(f"  {name} ({key[:12]}), which the spec no longer plans, is running and left to finish; "
                      f"`smx cancel {key[:12]}` stops it.")
    if where.kind == "slurm":
        _submit_to_slurm(opened, plan, where.slurm, detach=detach)
        return
    device = f"{len(slots)} GPU slot(s)" if slots[0].gpu is not None else f"{len(slots)} CPU slot(s)"
    if detach:
        free_slots = sum(is_free(slot.lock_path) for slot in slots)
        if free_slots:
            start_workers(opened, options, free_slots, detach=True)
            console.print(f"Scheduler running in the background on {free_slots} of {device}; follow it with "
                          f"`smx status {plan.experiment}` or `smx tui`. Worker output: "
                          f"{escape(str(opened.root / 'logs' / 'workers.log'))}")
        else:
            console.print(f"Every slot ({device}) is held by another smx scheduler on this store; it runs these "
                          f"jobs. Follow them with `smx status {plan.experiment}` or `smx tui`.")
        return
    workers = start_workers(opened, options, len(slots), detach=False)
    _follow(opened, plan.experiment, workers, device,
            start_on_free_slots=lambda: start_workers(opened, options, sum(is_free(slot.lock_path) for slot in slots),
                                                      detach=False))


def _refuse_local_executor_options(context: typer.Context, slurm_source: str) -> None:
    """An error naming the options for the local executor that the user gave, since the jobs go to Slurm."""
    # Compared by name: the enum is click's, which typer vendors in newer releases.
    given = [option for name, option in LOCAL_EXECUTOR_OPTIONS.items()
             if context.get_parameter_source(name).name != "DEFAULT"]
    if given:
        raise UserError(f"{', '.join(given)}: only for jobs run on this machine, but {slurm_source} sends them to "
                        f"Slurm.\nFix: drop {' and '.join(given)} (Slurm jobs take their GPUs and CPUs from "
                        "[executor.slurm] gpus_per_job and cpus_per_job), or use --executor local.")


def _submit_to_slurm(store: Store, plan: Plan, settings: SlurmSection, *, detach: bool) -> None:
    """Send the plan's jobs to Slurm, then follow them; while following, send again what Slurm lost."""
    from smx.scheduler import slurm

    submission = slurm.send_plan(store, plan, settings)
    console.print(f"Slurm: {len(submission.sent)} job(s) sent, {len(submission.in_slurm)} already there"
                  + (f" (Slurm job ids {', '.join(submission.sent.values())})" if submission.sent else "") + ".")
    if detach:
        console.print(f"Follow them with `smx status {plan.experiment}`, `smx tui` or `squeue`; "
                      f"Slurm's own output: {escape(str(store.root / 'slurm'))}")
        return

    def resend() -> list[subprocess.Popen]:
        slurm.cancel_orphans(store, plan)
        slurm.send_plan(store, plan, settings)
        return []

    partition = f"partition {settings.partition}" if settings.partition else "default partition"
    _follow(store, plan.experiment, [], f"Slurm ({partition})", start_on_free_slots=resend,
            retry_seconds=SLURM_RESEND_SECONDS,
            interrupt_note=f"stopped following; the jobs go on in Slurm (`smx status {plan.experiment}`, "
                           f"`smx cancel {plan.experiment}`).")


def _raise_keyboard_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _end_live_line() -> None:
    # Written to a file or a pipe, Rich's live display ends its last frame without a newline.
    if not console.is_terminal:
        console.line()


def _can_progress(jobs: Iterable[JobView]) -> bool:
    """Whether some job is running or ready to run; otherwise the rest wait on failed or cancelled jobs."""
    return any(job.status == "running" or (job.status == "pending" and job.blocked_by is None) for job in jobs)


def _follow(store: Store, experiment: str, workers: list[subprocess.Popen], device: str,
            start_on_free_slots: Callable[[], list[subprocess.Popen]], retry_seconds: float = SLOT_RETRY_SECONDS,
            interrupt_note: str = f"interrupted: running jobs were {REQUEUED}") -> None:
    """Show live progress until the experiment's jobs can go no further; exit 1 if any of them failed.

    Another scheduler on the store (a second `smx submit`) may hold every slot, so that our workers exit at once
    and its workers run our jobs: we follow them all the same, and start workers when a slot frees up.
    """
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from smx.db.queries import jobs_view
    from smx.scheduler.worker import EXIT_JOBS_FAILED, hangup_stops
    from smx.tui.cells import STATUS_STYLES

    # A worker that ran until nothing was left for it, whether or not its jobs failed.
    worker_finished = (0, EXIT_JOBS_FAILED)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
    overall = progress.add_task(f"{experiment} on {device}", total=1, detail="")
    bars: dict[str, int] = {}
    workers = list(workers)
    last_start = time.monotonic()
    said_waiting = False
    # `kill` (SIGTERM), or closing the terminal (SIGHUP), stops a following submit as Ctrl-C does, so that its workers
    # do not run on unsupervised.
    previous_handlers = {stop: signal.signal(stop, _raise_keyboard_interrupt)
                         for stop in (signal.SIGTERM, *hangup_stops())}
    try:
        with Live(progress, console=console, refresh_per_second=4):
            while True:
                workers_exited = all(worker.poll() is not None for worker in workers)
                with store.read_session() as session:
                    jobs = jobs_view(session, experiment)
                counts = {status: sum(job.status == status for job in jobs) for status in STATUS_STYLES}
                progress.update(overall, total=len(jobs), completed=counts["done"],
                                detail=" ".join(f"{n} {s}" for s, n in counts.items() if n))
                for job in jobs:
                    if job.status == "running" and job.key not in bars:
                        bars[job.key] = progress.add_task(f"  {_job_label(job, experiment)}", total=1.0, detail="")
                    if job.key in bars:
                        progress.update(bars[job.key], completed=job.progress, detail=job.progress_text)
                        if job.status != "running":
                            progress.remove_task(bars.pop(job.key))
                if workers_exited:
                    if any(worker.returncode not in worker_finished for worker in workers) or not _can_progress(jobs):
                        break
                    if not said_waiting:
                        # Our workers found no free slot, or nothing left for them while jobs remain: another
                        # scheduler's workers hold the slots (and run these jobs); say so rather than sit silent.
                        progress.console.print(f"Every slot ({device}) is held by another smx scheduler on this "
                                               "store; its workers run these jobs, and this one starts its own when "
                                               "a slot frees up.", highlight=False)
                        said_waiting = True
                    if time.monotonic() - last_start >= retry_seconds:
                        workers += start_on_free_slots()
                        last_start = time.monotonic()
                time.sleep(0.5)
    except KeyboardInterrupt:
        _end_live_line()
        # A second Ctrl-C must not cut short the workers putting their jobs back in the queue.
        for stop in (signal.SIGINT, signal.SIGTERM, *hangup_stops()):
            signal.signal(stop, signal.SIG_IGN)
        # A Ctrl-C in a terminal reaches the workers too, but a SIGINT sent to this process alone does not.
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)
        for worker in workers:
            worker.wait()
        _exit_interrupted(interrupt_note)
    finally:
        for stop, handler in previous_handlers.items():
            signal.signal(stop, handler)
    _end_live_line()
    stopped_workers = [worker for worker in workers if worker.returncode not in (*worker_finished, None)]
    for worker in stopped_workers:
        stderr = worker.stderr.read() if worker.stderr else ""
        if worker.returncode < 0:
            errors.print(f"[red]a worker was killed by {_signal_name(-worker.returncode)}.[/] A job it was running "
                         "shows as running until the next `smx submit` or `smx worker` on this host puts it back in "
                         "the queue; it resumes from its last checkpoint.", markup=True)
        elif worker.returncode == EXIT_INTERRUPTED:
            # A signal sent to the worker alone: it put its job back itself.
            errors.print(f"[red]a worker was stopped by SIGINT, SIGTERM or SIGHUP.[/] The job it was running, if any, "
                         f"was {REQUEUED}", markup=True)
        else:
            errors.print(f"[red]a worker stopped with code {worker.returncode}[/]" + (f":\n{escape(stderr)}" if stderr
                                                                                      else "."), markup=True)
    _print_jobs(store, experiment, only_unfinished=True)
    with store.read_session() as session:
        jobs = jobs_view(session, experiment)
    unfinished = Counter(job.status for job in jobs if job.status != "done")
    if unfinished and not stopped_workers:
        # Cancelled jobs, and those waiting on them or on a failed one, end a run as surely as a failure does.
        errors.print(f"{experiment} did not finish: {', '.join(f'{n} {s}' for s, n in sorted(unfinished.items()))} "
                     f"(see above; `smx retry {experiment}` queues failed and cancelled jobs again).",
                     markup=False, highlight=False)
    if stopped_workers or unfinished:
        raise typer.Exit(1)
    console.print(f"[green]all {len(jobs)} jobs done.[/] Results: `smx query --experiment {experiment}`, "
                  f"plots: `smx plot {experiment}`")


@app.command()
def worker(
    store: StoreOption = None,
    gpus: GpusOption = "auto",
    jobs_per_gpu: JobsPerGpuOption = 1,
    cpu_jobs: CpuJobsOption = 1,
    stay: Annotated[bool, typer.Option(
        "--stay", help="Keep waiting for new jobs instead of exiting when idle.")] = False,
) -> None:
    """Run one worker: take a free slot and run ready jobs there. Exits with status 3 if any of them failed."""
    from smx.db.store import open_store
    from smx.scheduler.slots import make_slots, parse_gpus
    from smx.scheduler.worker import EXIT_JOBS_FAILED, run_worker
    from smx.tasks.flags import check_job_environment

    check_job_environment()
    # Only `smx submit` creates a store: a worker pointed at a mistyped path says so instead of making one there.
    opened = open_store(store, create=False)
    opened.prepare_for_writing()
    slots = make_slots(opened.locks_dir, parse_gpus(gpus), jobs_per_gpu, cpu_jobs)
    report = run_worker(opened, slots, stay=stay)
    ran = f"ran {report.ran} job(s), {report.failed} failed"
    if report.interrupted_by is not None:
        where = f"worker on {report.slot}" if report.slot else "worker"
        running = f"its running job {report.requeued} was {REQUEUED}" if report.requeued else "no job was running."
        _exit_interrupted(f"{where}: interrupted by {report.interrupted_by} after it {ran}; {running}")
    if report.slot is None:
        console.print("every slot is taken by another worker; nothing to do here.")
        return
    console.print(f"worker on {report.slot}: {ran}", markup=False, highlight=False)
    if report.failed:
        raise typer.Exit(EXIT_JOBS_FAILED)


def _print_jobs(store: Store, experiment: str | None, only_unfinished: bool = False) -> None:
    from smx.db.queries import jobs_view
    from smx.tui.cells import STATUS_STYLES, duration

    with store.read_session() as session:
        jobs = jobs_view(session, experiment)
        others = jobs_view(session, None, ["running"]) if experiment else []
    if only_unfinished:
        jobs = [job for job in jobs if job.status != "done"]
        if not jobs:
            return
    table = Table(title=f"jobs of {experiment}" if experiment else "jobs", title_justify="left")
    table.add_column("key", no_wrap=True)
    table.add_column("job", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("progress")
    table.add_column("device", no_wrap=True)
    table.add_column("elapsed", no_wrap=True)
    table.add_column("note", overflow="ellipsis", max_width=60)
    for job in jobs:
        style = STATUS_STYLES.get(job.status, "")
        note = failure_summary(job.error or "")
        if job.blocked_by:
            note = f"waiting on a {job.blocked_by} parent"
        if job.silent_seconds is not None:
            note = (f"no word from its worker for {duration(job.silent_seconds)}: if it stopped, "
                    "`smx submit` or `smx worker` resumes the job")
        # Unfinished jobs that an edited spec left behind: nothing will run them unless they are retried.
        orphan = not job.in_experiment and job.status != "done"
        label = escape(_job_label(job, experiment)) + (" [dim](in no experiment)[/]" if orphan else "")
        table.add_row(job.key[:8], label,
                      f"[{style}]{job.status}[/]",
                      escape(job.progress_text) if job.status == "running" else "", job.device or "",
                      duration(job.elapsed_seconds), escape(note))
    _print_table(table)
    # The slots its pending jobs wait for may be held by jobs this listing does not show.
    own = {job.key for job in jobs}
    elsewhere = [job for job in others if job.key not in own]
    if elsewhere and any(job.status == "pending" for job in jobs):
        named = ", ".join(f"{job.name} ({job.key[:8]}{'' if job.in_experiment else ', in no experiment'})"
                          for job in elsewhere[:OTHER_RUNNING_SHOWN])
        more = f" and {len(elsewhere) - OTHER_RUNNING_SHOWN} more" if len(elsewhere) > OTHER_RUNNING_SHOWN else ""
        console.print(f"Also running, outside {experiment}: {named}{more} (`smx status --jobs`).",
                      markup=False, highlight=False)


@app.command()
def status(
    experiment: Annotated[Optional[str], typer.Argument(help="Show this experiment's jobs.")] = None,
    jobs: Annotated[bool, typer.Option("--jobs", help="List every job in the store.")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed jobs, with their errors.")] = False,
    store: StoreOption = None,
) -> None:
    """Show experiments and their jobs."""
    from smx.db.queries import (PROVISIONAL_BEST_ACR, PROVISIONAL_MARK, experiments_overview, jobs_view,
                                require_experiment)
    from smx.db.store import open_store

    if experiment is not None and jobs:
        raise UserError(f"--jobs lists every job in the store, and {experiment!r} names one experiment.\nFix: "
                        f"`smx status {experiment}` for its jobs, or `smx status --jobs` for all of them.")
    opened = open_store(store, create=False)
    if experiment is not None:
        with opened.read_session() as session:
            require_experiment(session, experiment)
    if failed:
        with opened.read_session() as session:
            failed_jobs = jobs_view(session, experiment, ["failed"])
        if not failed_jobs:
            console.print(f"no failed jobs in {experiment or 'the store'}.")
        for job in failed_jobs:
            outside = "" if job.in_experiment else " (in no experiment)"
            console.print(f"[red]{escape(_job_label(job, experiment))}[/] ({job.key[:12]}), attempt {job.attempts}, "
                          f"log {job.log_path}{outside}")
            console.print(job.error or "", markup=False, highlight=False)
        return
    if experiment or jobs:
        _print_jobs(opened, experiment)
        return
    with opened.read_session() as session:
        overview = experiments_overview(session)
    if not overview:
        console.print("no experiments yet. Start one with `smx submit experiments/quickstart.toml`.")
        return
    table = Table(title=f"experiments in {escape(opened.display_location)}", title_justify="left")
    # Few columns, so that an 80-column terminal shows whole names and dates; the state wraps instead.
    table.add_column("experiment", no_wrap=True)
    table.add_column("configs", justify="right")
    table.add_column("jobs")
    table.add_column("best ACR", justify="right")
    table.add_column("updated", no_wrap=True)
    for item in overview:
        best_acr = "" if item.best_acr is None else (f"{item.best_acr:.3f}"
                                                     + (PROVISIONAL_MARK if item.best_acr_provisional else ""))
        table.add_row(item.name, str(item.configs), _job_states(item.counts, item.total), best_acr,
                      f"{item.updated_at:%Y-%m-%d %H:%M}")
    _print_table(table)
    if any(item.best_acr_provisional for item in overview):
        console.print(f"{PROVISIONAL_MARK} {PROVISIONAL_BEST_ACR}", markup=False, highlight=False)


def _job_states(counts: dict[str, int], total: int) -> str:
    """'3/5 done, 1 running, 1 pending': the jobs not done, by state, only where there are any."""
    others = [f"[red]{counts[state]} failed[/]" if state == "failed" else f"{counts[state]} {state}"
              for state in ("running", "pending", "failed", "cancelled") if counts[state]]
    return ", ".join([f"{counts['done']}/{total} done", *others])


@app.command()
def retry(
    targets: Annotated[list[str], typer.Argument(help="Experiment names or job keys (prefixes of 4+ characters).")],
    store: StoreOption = None,
) -> None:
    """Put failed or cancelled jobs back in the queue (run them with `smx worker` or `smx submit`)."""
    from smx.db.store import open_store
    from smx.scheduler import queue

    opened = open_store(store, create=False)
    keys = queue.retry(opened, targets)
    _note_keys_behind_names(opened, targets)
    console.print(f"{len(keys)} job(s) queued again." + (" Run them with `smx worker` or `smx submit`." if keys else
                  f" Nothing failed or cancelled there ({_states_of(opened, targets)}; an experiment counts the jobs "
                  "of its current plan only; `smx status --failed` lists every failed job in the store, with its "
                  "key). A running job whose worker died is resumed by `smx submit` or `smx worker`."),
                  markup=False, highlight=False)


@app.command()
def cancel(
    targets: Annotated[list[str], typer.Argument(help="Experiment names or job keys (prefixes of 4+ characters).")],
    store: StoreOption = None,
) -> None:
    """Cancel pending or running jobs; a running job's process stops within seconds.

    The Slurm jobs of jobs sent to Slurm are cancelled with scancel."""
    from smx.db.store import open_store
    from smx.scheduler.queue import cancel_with_slurm_jobs

    opened = open_store(store, create=False)
    cancellation = cancel_with_slurm_jobs(opened, targets)
    _note_keys_behind_names(opened, targets)
    console.print(cancellation.summary + ("" if cancellation.keys or cancellation.shared else
                                          f" Nothing there was pending or running ({_states_of(opened, targets)})."),
                  markup=False, highlight=False)


def _note_keys_behind_names(opened: Store, targets: list[str]) -> None:
    from smx.scheduler.queue import keys_behind_names, shown_keys

    for name, keys in keys_behind_names(opened, targets).items():
        errors.print(f"note: {name!r} named the experiment {name}; job keys start with it too ({shown_keys(keys)}): "
                     "to name a job, give more characters of its key.", markup=False, highlight=False)


@app.command()
def remove(
    experiments: Annotated[list[str], typer.Argument(help="Experiment names.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    store: StoreOption = None,
) -> None:
    """Remove experiments from the store, with their results and the jobs no other experiment needs.

    Deletes their jobs, certificates, summaries, checkpoints, logs and plots, except the jobs another experiment
    also needs. Their jobs must be finished or cancelled first."""
    from smx.db.store import open_store
    from smx.scheduler.removal import plan_removal, remove_experiments

    opened = open_store(store, create=False)
    if not yes:
        with opened.read_session() as session:
            planned = plan_removal(session, opened, experiments)
        if not sys.stdin.isatty():
            raise UserError(f"smx remove deletes {planned.summary()}; it asks first, and there is no terminal to "
                            "ask on.\nFix: add --yes to remove them.")
        console.print(f"This deletes {planned.summary()}.", markup=False, highlight=False)
        _print_kept(planned.kept)
        if not typer.confirm("Remove?", default=False):
            console.print("Nothing removed.")
            raise typer.Exit(1)
    removal = remove_experiments(opened, experiments, confirmed=None if yes else planned.job_keys)
    console.print(f"removed {removal.summary()}.", markup=False, highlight=False)
    _print_kept(removal.kept)
    for problem in removal.not_removed:
        errors.print(f"warning: could not remove {problem}; delete it by hand.", markup=False, highlight=False)


def _print_kept(kept_jobs: list[KeptJob]) -> None:
    for kept in kept_jobs:
        console.print(f"  kept {kept.name} ({kept.key[:12]}): {kept.reason()}", markup=False, highlight=False)


def _states_of(store: Store, targets: list[str]) -> str:
    """'2 done, 1 failed': the states of the jobs that `targets` name, for a command that found nothing to do."""
    from smx.scheduler.queue import select_jobs

    with store.read_session() as session:
        counts = Counter(job.status for job in select_jobs(session, targets).jobs)
    return ", ".join(f"{number} {status}" for status, number in sorted(counts.items())) or "no jobs"


@app.command()
def query(
    sql: Annotated[Optional[str], typer.Argument(help="One read-only SQL statement.")] = None,
    experiment: Annotated[Optional[str], typer.Option(
        "--experiment", "-e", help="Export this experiment's results rows.")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv, json (one object per row; NaN and "
                                        "infinities are null) or md.")] = "table",
    tables: Annotated[bool, typer.Option("--tables", help="List tables and views with their columns.")] = False,
    store: StoreOption = None,
) -> None:
    """Run read-only SQL on the store, or export an experiment's results."""
    from smx.db.readonly import run_query, tables_sql
    from smx.db.store import open_store
    from smx.report import ASCII_BOX, FORMATS, boxed_table, experiment_results, format_cell, render

    if format not in FORMATS:
        raise UserError(f"unknown --format {format!r}.\nFix: use one of {', '.join(FORMATS)}.")
    if sum(option is not None and option is not False for option in (sql, experiment, tables or None)) != 1:
        raise UserError("give exactly one of: a SQL statement, --experiment NAME, or --tables.\n"
                        "Example: smx query \"SELECT experiment, config, acr FROM results\"")
    opened = open_store(store, create=False)
    if tables:
        sql = tables_sql(opened)
    try:
        result = (experiment_results(opened, experiment, required=True) if experiment
                  else run_query(opened, sql or ""))
    except KeyboardInterrupt:
        errors.print("interrupted: the query was stopped (it changes nothing in the store).", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if experiment and result.provisional:
        errors.print(result.provisional, markup=False, highlight=False)
    if format != "table":
        sys.stdout.write(render(result, format))
        return
    cells = [[format_cell(value) for value in row] for row in result.rows]
    table = boxed_table(result.columns, cells)
    if console.is_terminal and cell_len(table.partition("\n")[0]) > console.width:
        # Folded into the terminal, wide rows come out as columns a few letters wide: show one block per row.
        name_width = max(len(column) for column in result.columns)
        for number, row in enumerate(cells, start=1):
            console.rule(f"row {number}", align="left")
            for column, cell in zip(result.columns, row):
                console.print(f"{column:<{name_width}} │ {cell}", markup=False, highlight=False)
        errors.print(f"({len(result.columns)} columns are wider than this terminal, so each row is a block; "
                     "--format csv or md gives a table.)", highlight=False)
    else:
        try:
            "┃".encode(sys.stdout.encoding or "utf-8")
        except (UnicodeEncodeError, LookupError):
            table = table.translate(ASCII_BOX)
        sys.stdout.write(table)
    console.print(f"{len(result.rows)} row(s)")


def _refuse_empty_out(out: str | None) -> None:
    """`--out "$DIR"` with DIR unset would write into the current directory: a mistake to name, not to follow."""
    if out is not None and not out.strip():
        raise UserError("--out is empty (an unset shell variable?).\nFix: give a path, or leave --out out to write to "
                        "the default place in the store.")


@app.command()
def plot(
    experiment: Annotated[str, typer.Argument(help="Experiment name.")],
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Image file (.png, .pdf or .svg), or a directory (existing, or ending in /) to write "
                            "NAME.png in \\[default: STORE/plots/NAME.png].")] = None,
    store: StoreOption = None,
) -> None:
    """Plot certified accuracy against radius for each config of an experiment, and its analyses.

    The certified-accuracy plot is PNG, PDF or SVG; the analyses' plots go beside it, named after it and in its
    format (NAME-confidence.png, NAME-mixing-ratio.png), one panel per sigma. Such a plot of an analysis the
    experiment has no results of now, left by an earlier plot, is removed from the store's plots folder, and named
    elsewhere."""
    from smx.analysis_report import analysis_plot_paths, plot_analysis
    from smx.db.queries import require_experiment
    from smx.db.store import open_store
    from smx.report import plot_experiment, plot_file, refuse_directories

    _refuse_empty_out(out)
    opened = open_store(store, create=False)
    with opened.read_session() as session:
        require_experiment(session, experiment)  # before its name makes the file names
    if out is None:
        out_path = opened.root / "plots" / f"{experiment}.png"
    elif out.endswith(("/", os.sep)):  # Path drops the slash that says a directory is meant, so read it here
        out_path = Path(out) / f"{experiment}.png"
    else:
        out_path = Path(out)
    path = plot_file(out_path, experiment)
    refuse_directories([path, *analysis_plot_paths(path).values()])  # before one is written: all or none
    path, provisional = plot_experiment(opened, experiment, path)
    if provisional:
        errors.print(provisional, markup=False, highlight=False)
    analysis_plots = plot_analysis(opened, experiment, path)
    for written in [path, *analysis_plots.written]:
        console.print(f"wrote {written}", markup=False, highlight=False, soft_wrap=True)
    for kind, removed in analysis_plots.removed.items():
        console.print(f"removed {removed}: {experiment} has no {kind.replace('_', ' ')} analysis results now.",
                      markup=False, highlight=False, soft_wrap=True)
    for kind, left in analysis_plots.left.items():
        errors.print(f"note: {left} is not from this plot: {experiment} has no {kind.replace('_', ' ')} analysis "
                     "results now (left as it is, outside the store's plots folder).", markup=False, highlight=False,
                     soft_wrap=True)
    for problem in analysis_plots.not_removed:
        errors.print(f"warning: could not remove {problem}; it is an earlier analysis plot of {experiment}, which has "
                     "no results of that analysis now: delete it by hand.", markup=False, highlight=False)


@app.command()
def tui(
    store: StoreOption = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Only look: refuse cancel, retry and export.")] = False,
) -> None:
    """Live terminal UI: experiments, jobs (with logs and errors), results and certified-accuracy curves."""
    from smx.tui.app import SmxApp

    SmxApp(store, read_only=read_only, compare_with_paper=True).run()


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="Experiment name.")],
    format: Annotated[str, typer.Option("--format", "-f", help="text, md or latex.")] = "text",
    compare: Annotated[Optional[str], typer.Option("--compare", help="paper: add the published row and the "
                                                   "difference beside each config of a published setting.")] = None,
    store: StoreOption = None,
) -> None:
    """Print an experiment's table in the paper's layout: ACR and certified accuracy (%) per radius, by sigma.

    Its \\[analyze] results, where it has some, follow as tables of their own."""
    from smx.analysis_report import analysis_tables
    from smx.db.store import open_store
    from smx.report import COMPARE_CHOICES, REPORT_FORMATS, experiment_report, render_analysis, render_report

    if format not in REPORT_FORMATS:
        raise UserError(f"unknown --format {format!r}.\nFix: use one of {', '.join(REPORT_FORMATS)}.")
    if compare is not None and compare not in COMPARE_CHOICES:
        raise UserError(f"unknown --compare {compare!r}.\nFix: use --compare {' or '.join(COMPARE_CHOICES)}.")
    opened = open_store(store, create=False)
    result = experiment_report(opened, experiment, compare_with_paper=compare == "paper")
    if format == "text":  # md and latex carry the notes in the table they write
        for note in result.notes():
            errors.print(note, markup=False, highlight=False)
    sys.stdout.write(render_report(result, format))
    for kind, table in analysis_tables(opened, experiment).items():
        sys.stdout.write(render_analysis(kind, table, format))


@app.command("import")
def import_log(
    file: Annotated[Path, typer.Argument(help="Certification log (TSV: idx label predict radius correct time).")],
    name: Annotated[str, typer.Option("--name", help="Experiment of imports to add it to (created if new; not one "
                                                     "that `smx submit` made).")],
    method: Annotated[str, typer.Option("--method", help="Training method of the certified model.")],
    sigma: Annotated[float, typer.Option("--sigma", help="Noise level it was trained and certified with.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset it was certified on.")] = "mnist",
    split: Annotated[str, typer.Option("--split", help="Split it was certified on: test or train.")] = "test",
    config: Annotated[Optional[str], typer.Option("--config", help="Config name \\[default: the file's stem].")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="A hyperparameter of the method, KEY=VALUE "
                                                       "(repeatable); unset ones are smx's defaults.")] = None,
    note: Annotated[str, typer.Option("--note", help="Free text kept with the import.")] = "",
    store: StoreOption = None,
) -> None:
    """Add a certification log in the field's TSV format to the store, beside our own results."""
    from smx.db.store import open_store
    from smx.imports import ImportOptions, load_log, store_log

    options = ImportOptions(experiment=name, method=method, sigma=sigma, dataset=dataset, split=split,
                            config_name=config, params=param or [], note=note)
    # Read and check everything first: a bad log leaves the store as it was (and does not create one).
    log = load_log(file, options)
    opened = open_store(store)
    outcome = store_log(opened, log)
    what = "already imported" if outcome.already_imported else "imported"
    console.print(f"{what} {escape(str(file))} as [bold]{outcome.experiment}[/] / {escape(outcome.config_name)}: "
                  f"{outcome.samples} certificates, ACR {outcome.acr:.4f} (job {outcome.certify_key[:12]}). "
                  f"Store: {escape(opened.display_location)}", highlight=False, soft_wrap=True)
    if outcome.already_imported and note != outcome.note:
        console.print(f"--note was not stored: the import already there keeps its note {outcome.note!r}.",
                      markup=False, highlight=False, soft_wrap=True)
    impossible = log.impossible_radius()
    if impossible is not None:
        errors.print(f"warning: {escape(str(file))} certifies a radius of {impossible:g}, which no certification at "
                     f"sigma {sigma:g} can give: was it certified at a larger sigma? Fix: import it again with the "
                     f"right --sigma under another --name or --config, or `smx remove {name}` (the whole experiment) "
                     "and import it again.", highlight=False, soft_wrap=True)
    assumed = log.assumed_params()
    if assumed and not outcome.already_imported:
        # Comparisons with the paper match on these; a wrong assumption (e.g. m=1 for an m=4 run) matches the
        # wrong published row without any other sign.
        console.print(f"{method} defaults assumed for what --param did not state: "
                      f"{', '.join(f'{key}={value}' for key, value in assumed.items())}",
                      markup=False, highlight=False, soft_wrap=True)


@app.command()
def export(
    experiment: Annotated[str, typer.Argument(help="Experiment name.")],
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Directory \\[default: STORE/exports/NAME/].")] = None,
    store: StoreOption = None,
) -> None:
    """Write an experiment's certifications in the field's TSV format, one file per certified config.

    In the store's own folder, logs of configs the experiment no longer has are removed."""
    from smx.db.store import open_store
    from smx.imports import export_certification_logs

    _refuse_empty_out(out)
    opened = open_store(store, create=False)
    # The store's own folder follows the experiment's current plan; a folder the user chose is left as it is.
    exported = export_certification_logs(opened, experiment,
                                         Path(out) if out else opened.root / "exports" / experiment, prune=not out)
    for path in exported.paths:
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)
    for path in exported.removed:
        errors.print(f"removed {path}: no config of {experiment} has that log now", markup=False, highlight=False,
                     soft_wrap=True)
    if exported.unfinished:
        # On stderr: stdout stays one written path per line.
        skipped = ", ".join(f"{name} ({status})" for name, status in exported.unfinished.items())
        errors.print(f"skipped {len(exported.unfinished)} config(s) whose certify job is not done: {skipped}. "
                     f"Export again once `smx status {experiment}` shows them done.",
                     markup=False, highlight=False, soft_wrap=True)
