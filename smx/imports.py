"""Certification logs in the field's TSV format in and out of the store: `smx import` and `smx export`. Torch-free.

An imported log becomes what our own runs leave behind: a done "certify" job whose config records where the log
came from, its certificates (without pa_lower and count, which logs do not have), and a done "aggregate" job with
its summary, both members of an experiment. So `results`, `smx report`, plots and the TUI show published logs
beside our runs. The certify job's key hashes the file's sha256 and the stated metadata, so importing the same
file again changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from smx.db.models import Aggregate, Certificate, Experiment, ExperimentJob, Job, JobParent, utcnow
from smx.db.queries import certification_log_rows, experiment_names, name_alike_but_for_case
from smx.db.store import Store
from smx.errors import UserError
from smx.plan import content_key
from smx.report import cannot_write, plan_configs, summaries_of
from smx.scheduler.queue import lock_experiment_membership
from smx.science.catalog import DATASETS, Split
from smx.science.methods.params import METHOD_PARAMS
from smx.science.metrics import LogRow, Outcomes, read_certification_log, write_certification_log
from smx.spec import CONFIG_NAME, MAX_CONFIG_NAME_BYTES, SAFE_NAME
from smx.tasks.aggregate import aggregate_radii, summarise_config

DEFAULT_DATASET = "mnist"
# No certification reaches a radius past the one these would give: far more draws, and a laxer alpha, than anyone uses.
IMPLAUSIBLE_DRAWS = 10**12
IMPLAUSIBLE_ALPHA = 0.05


@dataclass(frozen=True)
class ImportOptions:
    """What the user says about a log: where it goes and what model it certified."""

    experiment: str
    method: str
    sigma: float
    dataset: str = DEFAULT_DATASET
    split: str = "test"  # the split the log certified, whose images its idx counts
    config_name: str | None = None  # default: the file's stem
    params: list[str] = field(default_factory=list)  # "key=value" as given on the command line
    note: str = ""


@dataclass(frozen=True)
class LoadedLog:
    """A certification log read and checked, with what the user said about it; nothing is stored yet."""

    path: Path
    sha256: str
    rows: list[LogRow]
    experiment: str
    config_name: str
    dataset: str
    split: str
    method: str
    sigma: float
    params: dict[str, Any]  # hyperparameters as stated, validated against the method's
    note: str

    def assumed_params(self) -> dict[str, Any]:
        """The method's defaults for the hyperparameters not stated: what matching with the paper assumes."""
        defaults = METHOD_PARAMS[self.method]().model_dump()
        return {key: value for key, value in defaults.items() if key not in self.params}

    def impossible_radius(self) -> float | None:
        """The log's largest radius where no certification at its --sigma could give it (CERTIFY certifies at
        most sigma * Phi^-1(alpha ** (1 / n)): under 7 sigma even for n = 10^12 draws at alpha = 0.05), else None.
        Such a log was certified at a larger sigma than it is said to be."""
        from smx.reference import max_certifiable_radius

        largest = max(row.radius for row in self.rows)
        return largest if largest > max_certifiable_radius(self.sigma, IMPLAUSIBLE_DRAWS, IMPLAUSIBLE_ALPHA) else None

    def identity(self) -> dict[str, Any]:
        """What the certify job's key hashes: the file's content and what it is said to be."""
        identity = {"sha256": self.sha256, "dataset": self.dataset, "method": self.method, "sigma": self.sigma,
                    "params": self.params}
        # Only where it is not the test split, which every import before --split certified: their keys stay.
        return identity if self.split == "test" else {**identity, "split": self.split}


@dataclass
class ImportOutcome:
    experiment: str
    config_name: str
    certify_key: str
    samples: int
    acr: float
    already_imported: bool
    note: str  # the note the import was made with: a later import of the same log does not change it


def _check_name(name: str, option: str) -> str:
    if SAFE_NAME.fullmatch(name) is None:
        raise UserError(f"{option} {name!r} is not a safe name.\n"
                        f"Fix: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit.")
    return name


def _check_config_name(name: str, option: str) -> str:
    """A config may be named as smx names its own (`smoothmix-eta=2`), so an exported log imports as it is."""
    if CONFIG_NAME.fullmatch(name) is None:
        raise UserError(f"{option} {name!r} is not a safe config name.\n"
                        f"Fix: use 1 to {MAX_CONFIG_NAME_BYTES} letters, digits, '-', '_', '.', '=' or '+', starting "
                        "with a letter or digit" + ("" if option == "--config" else ", or name it with --config NAME")
                        + ".")
    return name


def _parse_params(method: str, options: list[str]) -> dict[str, Any]:
    """`--param eta=1` options → the stated hyperparameters, checked against the method's parameter model."""
    model = METHOD_PARAMS[method]
    stated: dict[str, Any] = {}
    for option in options:
        key, separator, text = option.partition("=")
        key = key.strip()
        if not separator or not key:
            raise UserError(f"--param {option!r} is not KEY=VALUE.\nFix: write e.g. --param eta=1.")
        if key not in model.model_fields:
            raise UserError(f"--param {key}: {method} has no such hyperparameter.\n"
                            f"Fix: use one of {', '.join(model.model_fields)}.")
        if key in stated:
            raise UserError(f"--param {key} is given twice.\nFix: state each hyperparameter once.")
        try:
            stated[key] = json.loads(text)  # numbers, true/false and null as JSON
        except json.JSONDecodeError:
            stated[key] = text
    try:
        validated = model.model_validate(stated)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
                             for problem in error.errors())
        raise UserError(f"--param for {method}: {problems}.\nFix: give values of the right type and range.") from None
    return validated.model_dump(include=set(stated))


def load_log(path: Path, options: ImportOptions) -> LoadedLog:
    """Check the options and read the log, before anything touches the store."""
    if options.method not in METHOD_PARAMS:
        raise UserError(f"unknown --method {options.method!r}.\nFix: use one of {', '.join(sorted(METHOD_PARAMS))}.")
    if options.dataset not in DATASETS:
        raise UserError(f"unknown --dataset {options.dataset!r}.\nFix: use one of {', '.join(DATASETS)}.")
    if options.split not in get_args(Split):
        raise UserError(f"unknown --split {options.split!r}.\nFix: use one of {', '.join(get_args(Split))}.")
    if not math.isfinite(options.sigma) or options.sigma <= 0:
        raise UserError(f"--sigma must be a positive number, not {options.sigma}.\n"
                        "Fix: give the noise level the model was certified with, e.g. --sigma 0.5.")
    if str(path) == "-":
        raise UserError("smx import reads a log from a file, not from standard input.\n"
                        "Fix: save the log to a file and give its path.")
    experiment = _check_name(options.experiment, "--name")
    config_name = _check_config_name(options.config_name or path.stem,
                                     "--config" if options.config_name else "the file's stem")
    params = _parse_params(options.method, options.params)
    try:
        content = path.read_bytes()
        rows = read_certification_log(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file.\nFix: give the path of a certification log (TSV).") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text.\n"
                        "Fix: give a certification log in the field's TSV format.") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory.\nFix: give the path of one certification log (TSV) in it.") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}.\nFix: check the path and its permissions.") from None
    if not rows:
        raise UserError(f"{path} has a header but no rows.\nFix: give a log with at least one certified sample.")
    dataset = DATASETS[options.dataset]
    split_images = dataset.images_in(options.split)
    first_line: dict[int, int] = {}
    for line_number, row in enumerate(rows, start=2):
        if row.label >= dataset.num_classes or row.prediction >= dataset.num_classes:
            raise UserError(f"{path}, line {line_number}: label {row.label}, predict {row.prediction}: "
                            f"{options.dataset} has classes 0 to {dataset.num_classes - 1}.\n"
                            "Fix: give the --dataset the log was certified on.")
        if row.index >= split_images:
            raise UserError(f"{path}, line {line_number}: sample {row.index}: {options.dataset}'s {options.split} set "
                            f"has {split_images:,} images (idx 0 to {split_images - 1}).\n"
                            "Fix: give the --dataset and --split the log was certified on.")
        if row.index in first_line:
            raise UserError(f"{path}, line {line_number}: sample {row.index} was already certified on line "
                            f"{first_line[row.index]}.\nFix: give a log with one row per test sample.")
        first_line[row.index] = line_number
    return LoadedLog(path=path.resolve(), sha256=hashlib.sha256(content).hexdigest(), rows=rows,
                     experiment=experiment, config_name=config_name, dataset=options.dataset, split=options.split,
                     method=options.method, sigma=options.sigma, params=params, note=options.note)


def _summary_of(session: Session, aggregate_key: str) -> Aggregate:
    return session.scalars(select(Aggregate).where(Aggregate.job_key == aggregate_key)).one()


def store_log(store: Store, log: LoadedLog) -> ImportOutcome:
    """Store an imported log as a done certify job and its summary, in one transaction."""
    certify_key = content_key("certify", {"import": log.identity()}, [])
    entry = {"name": log.config_name, "certify_key": certify_key, "method": log.method, "sigma": log.sigma,
             "swept": {f"train.{log.method}.{key}": value for key, value in log.params.items()}}
    aggregate_inputs = {"experiment": log.experiment, "radii": [], "configs": [entry]}
    aggregate_key = content_key("aggregate", aggregate_inputs, [certify_key])
    now = utcnow()
    with store.session() as session:
        lock_experiment_membership(session)
        experiment = session.scalar(select(Experiment).where(Experiment.name == log.experiment))
        if experiment is not None and experiment.spec_text:
            raise UserError(f"experiment {log.experiment!r} was made by `smx submit` from {experiment.spec_path}; "
                            "its next submit would drop imported logs from it.\n"
                            f"Fix: import into an experiment of its own, e.g. --name {log.experiment}-published.")
        members = {} if experiment is None else dict(session.execute(
            select(ExperimentJob.job_key, ExperimentJob.config_name)
            .where(ExperimentJob.experiment_id == experiment.id)).all())
        if aggregate_key in members:
            aggregate = _summary_of(session, aggregate_key)
            stored = session.get(Job, certify_key).config.get("import", {}).get("note", "")
            return ImportOutcome(log.experiment, log.config_name, certify_key, aggregate.num_samples, aggregate.acr,
                                 already_imported=True, note=stored)
        if certify_key in members:
            raise UserError(f"{log.path} is already in experiment {log.experiment!r} as config "
                            f"{members[certify_key]!r}.\nFix: nothing to do; or import into another --name.")
        if log.config_name in members.values():
            raise UserError(f"experiment {log.experiment!r} already has a config named {log.config_name!r}.\n"
                            "Fix: name this one with --config NAME.")
        # A new experiment's name, or a config's name in its experiment (their results folder and files).
        if experiment is not None:
            what, name, option, others = "config", log.config_name, "--config", [n for n in members.values() if n]
        else:
            what, name, option, others = "experiment", log.experiment, "--name", experiment_names(session)
        alike = name_alike_but_for_case(name, others)
        if alike is not None:
            raise UserError(f"{what} {name!r} differs from the {what} {alike!r} only in case, and their results would "
                            f"be one file where file names ignore case (macOS, Windows).\nFix: name this one with "
                            f"{option} NAME.")
        if session.get(Job, certify_key) is None:
            session.add(Job(
                key=certify_key, kind="certify", name=f"import/{log.config_name}", status="done",
                config={
                    "import": {"source": str(log.path), "sha256": log.sha256, "rows": len(log.rows),
                               "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "note": log.note},
                    "data": {"dataset": log.dataset},
                    "certify": {"sigma": log.sigma, **({} if log.split == "test" else {"split": log.split})},
                    "train": {"method": log.method, "sigma": log.sigma, "params": log.params},
                },
                progress=1.0, progress_text="imported", finished_at=now,
            ))
            session.flush()
            session.execute(insert(Certificate), [
                {"job_key": certify_key, "sample_index": row.index, "label": row.label, "prediction": row.prediction,
                 "radius": row.radius, "correct": row.correct, "pa_lower": None, "count": None,
                 "seconds": row.seconds}
                for row in log.rows
            ])
        # Another experiment may hold the same log; its certify job is shared, as our runs' jobs are.
        if session.get(Job, aggregate_key) is None:
            session.add(Job(key=aggregate_key, kind="aggregate", name=f"aggregate/{log.experiment}/{log.config_name}",
                            config=aggregate_inputs, status="done", progress=1.0, progress_text="imported",
                            finished_at=now))
            session.flush()
            session.add(JobParent(child_key=aggregate_key, parent_key=certify_key))
            session.add(summarise_config(aggregate_key, log.experiment, entry, Outcomes.of_rows(log.rows),
                                         aggregate_radii([])))
        if experiment is None:
            experiment = Experiment(name=log.experiment, description=log.note or "imported certification logs",
                                    spec_path="", spec_text="", spec_hash="")
            session.add(experiment)
            session.flush()
        experiment.updated_at = now
        session.add_all([
            ExperimentJob(experiment_id=experiment.id, job_key=certify_key, config_name=log.config_name,
                          swept=entry["swept"]),
            ExperimentJob(experiment_id=experiment.id, job_key=aggregate_key, config_name=log.config_name, swept={}),
        ])
        session.flush()
        aggregate = _summary_of(session, aggregate_key)
        return ImportOutcome(log.experiment, log.config_name, certify_key, aggregate.num_samples, aggregate.acr,
                             already_imported=False, note=log.note)


@dataclass
class ExportOutcome:
    """What `smx export` wrote, and which configs it left out."""

    paths: list[Path]  # one log per certified config
    unfinished: dict[str, str]  # config name -> the status of its certify job, for configs not certified yet
    removed: list[Path] = field(default_factory=list)  # logs of configs the experiment no longer has (see prune)


def export_certification_logs(store: Store, experiment: str, out_dir: Path, *, prune: bool = False
                              ) -> ExportOutcome:
    """Write each of the experiment's configs whose certify job is done as `<config>.tsv` in the field's format.

    The configs are those its aggregate jobs name, so a partly finished experiment exports what it has; one with
    no certified config at all is an error that says why. With `prune` (the store's own export folder), the `.tsv`
    files there that this export did not write go: logs of configs the spec dropped, or of an earlier version of
    a config that is not certified again yet.
    """
    with store.read_session() as session:
        configs = sorted(plan_configs(session, experiment), key=lambda config: config.entry["name"])
        if not any(config.certified for config in configs):
            # No config is certified, so no aggregate has run either: summaries_of raises the error that says why
            # (or that the store has no such experiment).
            summaries_of(session, experiment)
        logs = {config.entry["name"]: certification_log_rows(session, config.entry["certify_key"])
                for config in configs if config.certified}
    unfinished = {config.entry["name"]: config.certify_status for config in configs if not config.certified}
    paths = [out_dir / f"{config_name}.tsv" for config_name in logs]
    # What would stop the export partway is refused before anything is written.
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory.\nFix: choose a directory with --out.")
    if blocking := [path for path in paths if path.is_dir()]:
        raise UserError(f"cannot write {blocking[0]}: a directory has that name.\n"
                        "Fix: move it away, or choose another directory with --out.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(Path(error.filename or out_dir), error) from None
    for path, rows in zip(paths, logs.values()):
        try:
            write_certification_log(path, rows)
        except OSError as error:  # named by the log it was writing, not by its hidden partial file
            raise cannot_write(path, error) from None
    removed = sorted(set(out_dir.glob("*.tsv")) - set(paths)) if prune else []
    for path in removed:
        path.unlink(missing_ok=True)
    return ExportOutcome(paths, unfinished, removed)
