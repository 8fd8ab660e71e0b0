"""Experiment specs: a TOML file → validated pydantic models → resolved configs. Torch-free.

A spec has the sections [experiment], [data], [model], [train], [certify] and [report], an optional
[analyze] (absent: no analyze jobs), an optional [sweep] (`[sweep.grid]`: every combination of its lists;
`[[sweep.zip]]`: equal-length lists varied together) and any number of [[variant]] tables whose keys
override the base settings. Configs are variant × zip × grid. `load_spec` reads, validates and expands a
spec completely, so a spec that loads is a spec that can be planned; `resolve_configs` hands out the expansion.

Conventions the rest of smx relies on:

- Key paths in messages are dotted TOML keys. Array items count from 1, as they appear in the file
  (`variant[2]` is the second [[variant]] table); sweep keys are quoted: `sweep.grid."train.sigma"`.
- A config's name is its variant's name followed by `-<label>=<value>` for each swept key that applies
  to it, in the order the settings have in the schema (seed, data, model, train, a method's parameters,
  certify), so that reordering keys in the file changes no name: "gaussian", "smoothmix-eta=2",
  "smoothmix-sigma=0.5-steps=4". Without [[variant]] tables the implicit variant's name is left out
  ("eta=2"), and a config that varies nothing is called "base". A label is the shortest dotted suffix
  of its key that no other swept key ends with ("eta"; "train.sigma" next to "certify.sigma").
  Floats drop a trailing ".0".
- A swept key applies to a config unless it is a parameter of a method the config does not train
  with. `ResolvedConfig.swept` maps the full dotted keys that apply ("train.smoothmix.eta") to their
  validated values.
- Overrides apply in the order base, variant, sweep. A variant may not set a swept key: the sweep's values
  would replace its value in every config, so it would never be used.
- Configs with identical contents are merged; the first one keeps its name.
- [analyze] is shared by the whole experiment, like [report], so that its configs are compared under the same
  analysis; its sigma defaults to each config's training sigma. When present, the resolved settings are the
  config's "analyze" entry.
- `data.root`, `data.download` and `certify.batch_size` are runtime settings (`ResolvedConfig.runtime` =
  {"data_root", "download", "certify_batch_size"}) and never part of a config: where the data live and how many
  rows share a certification pass change no result. A relative root is taken relative to the spec file's directory.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_core import ErrorDetails

from smx.errors import UserError
from smx.paths import expand_home
from smx.science.catalog import ARCHS, DATASETS
from smx.science.methods.params import METHOD_PARAMS, MethodParams
from smx.science.metrics import DEFAULT_RADII, RADIUS_DECIMALS

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

# Beyond this a sweep is almost certainly a mistake, and expanding it would take long and fill the store.
MAX_CONFIGS = 10_000
IMPLICIT_VARIANT_NAME = "base"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BARE_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+")

# Shared by every config of an experiment, so neither a variant nor a sweep may change them.
EXPERIMENT_WIDE_KEYS = ("experiment.name", "experiment.description", "report", "analyze", "executor")
# Where the data live, and how many rows share a certification pass, change no result: a variant may set them, a
# sweep may not.
RUNTIME_KEYS = ("data.root", "data.download", "certify.batch_size")
VARIANT_SECTIONS = ("experiment", "data", "model", "train", "certify")

KeyPath = tuple[str | int, ...]
Problem = tuple[str, str]  # (key path as text, what is wrong and how to fix it)


class SpecError(UserError):
    """A spec that cannot be used; the message names the file, the key path and the fix."""


def _suggestion(word: str, choices: Iterable[str]) -> str:
    by_lowercase = {choice.lower(): choice for choice in choices}
    # A wrong case ("N0") is the likeliest slip of all, and difflib rates a short word's case changes low.
    matches = [by_lowercase[word.lower()]] if word.lower() in by_lowercase else \
        [by_lowercase[match] for match in difflib.get_close_matches(word.lower(), list(by_lowercase), n=1)]
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def _check_choice(value: str, choices: Iterable[str], what: str) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}{_suggestion(value, choices)}; choose one of: {', '.join(choices)}")
    return value


def _check_safe_name(name: str) -> str:
    if SAFE_NAME.fullmatch(name) is None:
        example = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:64]
        hint = f", e.g. {example!r}" if example else ""
        raise ValueError(
            f"{name!r} is not a safe name; use 1 to 64 letters, digits, '-', '_' or '.', "
            f"starting with a letter or digit{hint}"
        )
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExperimentSection(_Section):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _check_safe_name(name)


class DataSection(_Section):
    dataset: str
    root: str | None = None
    download: bool = False

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, dataset: str) -> str:
        return _check_choice(dataset, DATASETS, "dataset")


class ModelSection(_Section):
    arch: str | None = None  # None: the dataset's default architecture

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str | None) -> str | None:
        return arch if arch is None else _check_choice(arch, ARCHS, "architecture")


class _TrainSectionBase(_Section):
    """[train] without the per-method tables; unset optimizer settings come from the dataset's recipe."""

    method: str = "gaussian"
    sigma: float = Field(gt=0.0)
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    lr_step: int | None = Field(None, ge=1)
    lr_gamma: float | None = Field(None, gt=0.0, le=1.0)
    momentum: float | None = Field(None, ge=0.0, lt=1.0)
    weight_decay: float | None = Field(None, ge=0.0)
    amp: bool = False  # bf16 autocast of the forward passes: faster on GPUs, but not fp32 training
    # "one_epoch_late": each decay one epoch after lr_step, as the jh-jeong repositories (SmoothMix, consistency,
    # and their ports of every baseline), whose recipes the datasets' defaults are, run under current PyTorch;
    # "on_time" is Cohen's and Salman's own schedule.
    lr_decay: Literal["on_time", "one_epoch_late"] = "one_epoch_late"

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _check_choice(method, METHOD_PARAMS, "training method")

    def method_params(self) -> MethodParams:
        table = getattr(self, self.method)
        return table if table is not None else METHOD_PARAMS[self.method]()


# One optional table per registered method (`train.smoothmix = {eta = 5.0}`), so that adding a method to
# METHOD_PARAMS is all it takes for specs to accept its parameters.
TrainSection = create_model(
    "TrainSection",
    __base__=_TrainSectionBase,
    **{method: (params | None, None) for method, params in METHOD_PARAMS.items()},
)


# Draws per image past which counting would overflow torch's 64-bit integers; ten million times the paper's n.
MAX_NOISE_DRAWS = 10**12


class CertifySection(_Section):
    sigma: float | None = Field(None, gt=0.0)  # None: the training sigma
    n0: int = Field(100, ge=1, le=MAX_NOISE_DRAWS)
    n: int = Field(100_000, ge=1, le=MAX_NOISE_DRAWS)
    alpha: float = Field(0.001, gt=0.0, lt=1.0)
    # The most rows of a forward pass; None: as many as the device suits (a memory probe on a GPU). Certificates
    # do not depend on it, so it is a runtime setting, outside the certify job's key.
    batch_size: int | None = Field(None, ge=1)
    max_samples: int | None = Field(None, ge=1)  # None: the whole split
    skip: int = Field(1, ge=1)  # certify every skip-th image, as --skip in the reference code
    split: Literal["test", "train"] = "test"
    # bf16 forward passes: faster, but reduced precision can produce false certificates (Voráček & Hein, 2023).
    precision: Literal["fp32", "bf16"] = "fp32"


# A sanity bound, not CERTIFY's: at n = 100,000 it certifies at most about 3.8 sigma, so a radius this large is a
# typo at any sigma anyone smooths with.
MAX_REPORT_RADIUS = 1000.0


class ReportSection(_Section):
    radii: list[float] = Field(default_factory=lambda: list(DEFAULT_RADII))

    @field_validator("radii")
    @classmethod
    def _sorted_radii(cls, radii: list[float]) -> list[float]:
        if not radii:
            raise ValueError("needs at least one radius, e.g. radii = [0.0, 0.5, 1.0]")
        if min(radii) < 0:
            raise ValueError(f"radii must be >= 0 (got {min(radii)}); remove the negative ones")
        if max(radii) > MAX_REPORT_RADIUS:
            raise ValueError(f"{max(radii):g} is over {MAX_REPORT_RADIUS:g}, far past any radius CERTIFY certifies "
                             f"(about 3.8 sigma at n = 100,000); give radii up to {MAX_REPORT_RADIUS:g}")
        # Results keep a radius to RADIUS_DECIMALS (acc_0_125 columns): two radii alike there would be one.
        seen: dict[float, float] = {}
        for radius in radii:
            kept = round(radius, RADIUS_DECIMALS)
            if kept in seen:
                if radius == seen[kept]:
                    raise ValueError(f"{radius!r} is given twice; give each radius once")
                raise ValueError(f"{radius!r} and {seen[kept]!r} are the same to the {RADIUS_DECIMALS} decimals that "
                                 f"results keep ({kept!r}); give each radius once")
            if kept == 0 < radius:
                raise ValueError(f"{radius!r} is 0 to the {RADIUS_DECIMALS} decimals that results keep; give 0.0 or a "
                                 f"radius of at least {10.0 ** -RADIUS_DECIMALS:g}")
            seen[kept] = radius
        return sorted(radii)


ANALYSES = ("confidence", "mixing_ratio")
# Table 1 of Jeong et al. 2021 attacks at these L2 radii, besides the clean inputs.
PAPER_EPSILONS = (1.0, 2.0, 3.0, 4.0, 5.0)


class AnalyzeSection(_Section):
    """[analyze]: the analyses of section 3.1 of the SmoothMix paper, run on each trained model.

    "confidence" (Table 1): mean true-class and max off-class confidence of the smoothed classifier on test
    inputs attacked by SmoothAdv's PGD within each L2 radius. "mixing_ratio" (Figure 3): for each correctly
    classified input, the smallest ratio along the line to its SmoothMix adversary (normalised-gradient ascent,
    steps of mix_alpha) at which the smoothed prediction changes. Figure 3's search is the paper's "50-step PGD
    with a loose bound of 8": 50 steps of 2 * 8 / 50 = 0.32 within the L2 ball of radius 8. A bound of at least
    mix_alpha * mix_steps never binds, as each step moves mix_alpha, so that gives the unrestricted search.
    The paper states neither Table 1's PGD steps nor any sample sizes: T = 10 is SmoothAdv's default, and
    m = 4 noise samples in both attacks, as in SmoothAdv's MNIST recipe.
    """

    kinds: list[str] = Field(default_factory=lambda: list(ANALYSES))
    sigma: float | None = Field(None, gt=0.0)  # None: the training sigma
    max_samples: int | None = Field(500, ge=1)  # the first test images; None: the whole split
    mc_samples: int = Field(1000, ge=1)  # noise draws per point to estimate P(f(x + delta) = c)
    batch_size: int = Field(1000, ge=1)  # rows per forward pass (images x noise samples in the attacks)
    epsilons: list[float] = Field(default_factory=lambda: list(PAPER_EPSILONS), validate_default=True)
    attack_steps: int = Field(10, ge=1)
    attack_noise_samples: int = Field(4, ge=1)
    mix_alpha: float = Field(0.32, gt=0.0)
    mix_steps: int = Field(50, ge=1)
    mix_max_norm: float = Field(8.0, gt=0.0)
    mix_noise_samples: int = Field(4, ge=1)
    grid: int = Field(20, ge=1)  # mixing ratios are searched among 1/grid, 2/grid, ..., 1

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        if not kinds:
            raise ValueError(f"needs at least one analysis, e.g. kinds = {json.dumps(list(ANALYSES))}")
        for kind in kinds:
            _check_choice(kind, ANALYSES, "analysis")
        return [kind for kind in ANALYSES if kind in kinds]

    @field_validator("epsilons")
    @classmethod
    def _clean_and_sorted_epsilons(cls, epsilons: list[float]) -> list[float]:
        if epsilons and min(epsilons) < 0:
            raise ValueError(f"epsilons must be >= 0 (got {min(epsilons)}); remove the negative ones")
        # The clean inputs are always analysed: listing 0.0 or not names the same analysis.
        return sorted(set(epsilons) | {0.0})


class SlurmSection(_Section):
    """How each job is asked of Slurm. Aggregate jobs ask for one CPU and no GPU whatever is set here.

    Strict: TOML's true is not the number 1, nor the string "1".
    """

    model_config = ConfigDict(strict=True)

    partition: str | None = None  # None: the cluster's default partition
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(4, ge=1)
    mem_gb: float | None = Field(None, gt=0.0)  # None: the partition's default
    time_min: int = Field(24 * 60, ge=1)
    # Further sbatch options by their long names without dashes, e.g. {account = "lab", qos = "high"}; `true`
    # writes a flag that takes no value (SBATCH_FLAGS). Options smx sets are refused (_sbatch_option_problem).
    sbatch: dict[str, str | int | bool] = Field(default_factory=dict)
    # Shell lines run before each job on its node, e.g. "module load cuda".
    setup: list[str] = Field(default_factory=list)

    @field_validator("partition")
    @classmethod
    def _named_partition(cls, partition: str | None) -> str | None:
        if partition is not None and not partition.strip():
            raise ValueError("empty; name a partition (`sinfo -s` lists them), or remove the key for the "
                             "cluster's default partition")
        if partition is not None and any(character.isspace() for character in partition):
            raise ValueError(f"{partition!r} holds a space, which no partition name does; name one partition, or "
                             "several separated by commas (gpu,gpu-long), and give other sbatch options in "
                             "[executor.slurm] sbatch (e.g. sbatch = { exclusive = true })")
        return partition

    @field_validator("sbatch")
    @classmethod
    def _no_sbatch_option_smx_sets(cls, sbatch: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        # Specs and user configs are checked before this (_sbatch_problems), each problem at its own key path.
        problems = [f"{key}: {problem}" for key, value in sbatch.items()
                    if (problem := _sbatch_option_problem(key, value))]
        if problems:
            raise ValueError("; ".join(problems))
        return sbatch


class ExecutorSection(_Section):
    """Where jobs run: "local" (this machine's GPUs or CPU) or "slurm". Never part of a job's key."""

    model_config = ConfigDict(strict=True)

    kind: Literal["local", "slurm"] = "local"
    slurm: SlurmSection = Field(default_factory=SlurmSection)


# sbatch options by their long names with "_" for "-". submitit writes each key of [executor.slurm] sbatch as
# `#SBATCH --<key with "_" for "-">` over its own options, so that a key there replaces, or repeats, what smx sets.
# Those smx sets from a typed key of [executor.slurm] (scheduler/slurm.py, _sbatch_parameters): option → typed key.
# One task on one node: --gpus, --gpus-per-node and --gpus-per-task all ask for the job's GPUs.
SBATCH_TYPED = {"partition": "partition", "time": "time_min", "cpus_per_task": "cpus_per_job", "gpus": "gpus_per_job",
                "gpus_per_node": "gpus_per_job", "gpus_per_task": "gpus_per_job", "mem": "mem_gb"}
# What to write for each typed key, in messages.
TYPED_EXAMPLES = {"partition": '"<partition>"', "gpus_per_job": "<GPUs>", "cpus_per_job": "<CPUs>",
                  "mem_gb": "<GB>", "time_min": "<minutes>", "setup": '["<shell line>"]'}
# Options smx or submitit set on every job for smx to work, or that break how submitit sends a job and reads
# sbatch's answer: option → why it is smx's.
_OUTPUT = "submitit keeps each job's output in $SMX_STORE_FILES/slurm/<id>/ and reads the job's result there"
_ONE_TASK = "each smx job runs as one task on one node"
_SUBMISSION = "smx sends each job's own batch script and reads its Slurm job id from sbatch's answer"
SBATCH_SET_BY_SMX: dict[str, str] = {
    "dependency": "each job waits for its parents' Slurm jobs with afterok",
    "job_name": "each Slurm job is named smx-<kind>-<config> (the aggregate: smx-aggregate-<experiment>)",
    "output": _OUTPUT,
    "error": _OUTPUT,
    "open_mode": _OUTPUT,
    "signal": "submitit asks for a signal before the time limit, to requeue the job and resume it from its "
              "checkpoint",
    "nodes": _ONE_TASK,
    "ntasks": _ONE_TASK,
    "ntasks_per_node": _ONE_TASK,
    "array": "each smx job is one Slurm job",
    "parsable": _SUBMISSION,
    "quiet": _SUBMISSION,
    "test_only": _SUBMISSION,
    "wait": _SUBMISSION,
    "wrap": _SUBMISSION,
}
# sbatch options that take no value, or an optional one: `true` writes the bare flag (`--exclusive`).
SBATCH_FLAGS = ("contiguous", "exclusive", "get_user_env", "hold", "ignore_pbs", "nice", "no_kill", "no_requeue",
                "overcommit", "oversubscribe", "propagate", "reboot", "requeue", "spread_job", "use_min_nodes",
                "verbose")
SBATCH_OPTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _sbatch_option_problem(key: str, value: Any) -> str | None:
    """What is wrong with `key = value` in [executor.slurm] sbatch, with the fix; None where nothing is."""
    if SBATCH_OPTION_NAME.fullmatch(key) is None:
        return ("not an sbatch option name; write sbatch's long option name without the dashes, "
                "e.g. account or mail-type")
    name, option = key.replace("-", "_"), "--" + key.replace("_", "-")
    if name in SBATCH_TYPED:
        typed = SBATCH_TYPED[name]
        return (f"smx sets {option} from executor.slurm.{typed}, which this would silently replace; set "
                f"executor.slurm.{typed} = {TYPED_EXAMPLES[typed]} instead and remove {key} from sbatch")
    if name in TYPED_EXAMPLES:
        return (f"a key of [executor.slurm] itself, not an sbatch option; move it out of sbatch: "
                f"executor.slurm.{name} = {TYPED_EXAMPLES[name]}")
    if name in SBATCH_SET_BY_SMX:
        return f"smx sets {option} itself ({SBATCH_SET_BY_SMX[name]}); remove {key} from sbatch"
    # sbatch takes any unambiguous start of a long option for the option (getopt_long): --dep is --dependency.
    abbreviated = [protected for protected in (*SBATCH_TYPED, *SBATCH_SET_BY_SMX) if protected.startswith(name)]
    if abbreviated:
        options = " or ".join("--" + protected.replace("_", "-") for protected in sorted(abbreviated))
        return (f"sbatch would read {option} as an abbreviation of {options}, which smx sets; write the full name "
                f"of the sbatch option you mean, or remove {key} from sbatch")
    if isinstance(value, bool):
        if value and name in SBATCH_FLAGS:
            return None
        if name in SBATCH_FLAGS:
            return f"false is not written as a flag; remove {key} from sbatch to leave {option} off"
        return (f"expected a string or an integer, got {_show(value)}; write {option}'s value (true is only for "
                f"options that take no value: {', '.join(flag.replace('_', '-') for flag in SBATCH_FLAGS)})")
    if isinstance(value, int):
        return None
    if isinstance(value, str):
        if not value.strip():
            return f"empty; write {option}'s value, or remove {key} from sbatch"
        if any(ord(character) < 32 or ord(character) == 127 for character in value):
            return "holds a line break or another control character, which would break the batch script; " \
                   "write the value on one line"
        return None
    fix = f'write it as a string ("{value}")' if isinstance(value, float) else f"write {option}'s value"
    return f"expected a string or an integer, got {_show(value)}; {fix}"


def _sbatch_problems(executor: Any) -> list[Problem]:
    """The problems of an [executor] table's slurm.sbatch options, each at its own key path."""
    slurm = executor.get("slurm") if isinstance(executor, dict) else None
    sbatch = slurm.get("sbatch") if isinstance(slurm, dict) else None
    if not isinstance(sbatch, dict):
        return []  # absent, or not a table: the model says what is wrong
    return [(_key_path(("executor", "slurm", "sbatch", key)), problem) for key, value in sbatch.items()
            if (problem := _sbatch_option_problem(key, value))]


class SpecDocument(_Section):
    """The settings of one config: the base spec with a variant's overrides and sweep values applied."""

    experiment: ExperimentSection
    data: DataSection
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection
    certify: CertifySection = Field(default_factory=CertifySection)
    analyze: AnalyzeSection | None = None
    report: ReportSection = Field(default_factory=ReportSection)
    executor: ExecutorSection | None = None


@dataclass(frozen=True)
class ResolvedConfig:
    name: str
    config: dict[str, Any]  # the canonical config of docs/architecture.md, every default filled in
    swept: dict[str, Any]  # full dotted sweep key → value, for the swept keys that apply to this config
    # {"data_root": absolute path or None, "download": bool, "certify_batch_size": int or None}; never part of a key
    runtime: dict[str, Any]


@dataclass(frozen=True)
class Spec:
    path: Path
    text: str
    document: dict[str, Any]  # the parsed TOML
    experiment: ExperimentSection
    report: ReportSection
    executor: dict[str, Any]  # the spec's [executor] table as written (validated); see executor_settings
    configs: tuple[ResolvedConfig, ...]


@dataclass(frozen=True)
class _Variant:
    name: str | None  # None: the implicit variant of a spec without [[variant]] tables
    overrides: dict[str, Any]
    where: KeyPath


@dataclass(frozen=True)
class _SweptKey:
    key: str
    where: KeyPath
    values: list[Any]


@dataclass
class _Sweep:
    zips: list[list[_SweptKey]] = field(default_factory=list)
    grid: list[_SweptKey] = field(default_factory=list)

    def ordered_keys(self) -> list[str]:
        """The swept keys in schema order, which does not depend on how the file orders them."""
        keys = {swept.key for group in self.zips for swept in group} | {swept.key for swept in self.grid}
        return [key for key in SWEEPABLE_KEYS if key in keys]


def load_spec(path: str | Path) -> Spec:
    """Read, validate and expand a spec file; every problem raises SpecError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory; give the path of a .toml spec file") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read the file ({error.strerror}); check that you may read it") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpecError(f"{path}: line {line}: not UTF-8 text; save the file as UTF-8") from None
    return parse_spec(text, path)


def parse_spec(text: str, path: str | Path = "<spec>") -> Spec:
    """Validate and expand spec text; `path` names it in messages and anchors a relative data.root."""
    path = Path(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(
            f"{path}: TOML syntax error: {error}; fix the syntax there "
            "(strings need quotes, tables are written [name], arrays [a, b])"
        ) from None
    problems = _non_finite_numbers(document, ()) + _sbatch_problems(document.get("executor"))
    if problems:
        raise _spec_error(path, problems)
    variants, variant_problems = _read_variants(document.get("variant"))
    sweep, sweep_problems = _read_sweep(document.get("sweep"))
    if variant_problems or sweep_problems:
        raise _spec_error(path, variant_problems + sweep_problems)
    if problems := _variant_values_the_sweep_replaces(variants, sweep):
        raise _spec_error(path, problems)
    _refuse_huge_sweep(path, variants, sweep)
    base = {key: value for key, value in document.items() if key not in ("sweep", "variant")}
    first_document, configs = _expand(path, base, variants, sweep)
    return Spec(
        path=path,
        text=text,
        document=document,
        experiment=first_document.experiment,
        report=first_document.report,
        executor=document.get("executor", {}),
        configs=tuple(configs),
    )


def user_config_path() -> Path:
    """The user's own settings (an [executor] table, say): $SMX_CONFIG, else $XDG_CONFIG_HOME/smx/config.toml, else
    ~/.config/smx/config.toml."""
    configured = os.environ.get("SMX_CONFIG")
    if configured:
        return expand_home(configured, "SMX_CONFIG")
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "smx" / "config.toml"


def executor_settings(spec: Spec, kind: str | None = None) -> ExecutorSection:
    """Where to run a spec's jobs: the user config's [executor], then the spec's over it, then `kind`
    (`smx submit --executor`) over both."""
    merged: dict[str, Any] = {}
    path = user_config_path()
    if os.environ.get("SMX_CONFIG") and not path.is_file():
        # Named on purpose, so its absence is a mistake rather than a machine without a user config.
        raise SpecError(f"SMX_CONFIG names {path}, which is not a file; point it at an smx user config, or unset it")
    if path.is_file():
        try:
            user_config = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise SpecError(f"{path}: cannot read this smx user config ({error}); fix or remove it") from None
        unknown = sorted(set(user_config) - {"executor"})
        if unknown:
            raise SpecError(f"{path}: unknown table(s) {', '.join(unknown)}; a user config holds only [executor]")
        merged = _validated_executor(path, user_config.get("executor", {})).model_dump(exclude_unset=True)
    for key, value in spec.executor.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    if kind is not None:
        merged["kind"] = kind
    return _validated_executor(spec.path, merged)


def _validated_executor(path: Path, table: Any) -> ExecutorSection:
    try:
        return ExecutorSection.model_validate(table)
    except ValidationError as error:
        # sbatch's problems key by key; the model's own check of sbatch says the same in one line.
        problems = _sbatch_problems(table)
        details = [{**detail, "loc": ("executor", *detail["loc"])} for detail in error.errors()]
        problems += [(_key_path(detail["loc"]), _explain(detail)) for detail in details
                     if not (problems and detail["loc"][:3] == ("executor", "slurm", "sbatch"))]
        raise _spec_error(path, problems) from None


def resolve_configs(spec: Spec) -> list[ResolvedConfig]:
    """The spec's distinct configs: variant × zip × grid, in that nesting order."""
    return list(spec.configs)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, -0.0 written as 0.0: equal data give equal text."""
    return json.dumps(_normalised(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalised(item) for item in value]
    if isinstance(value, float):
        return value + 0.0  # -0.0 + 0.0 == 0.0
    if isinstance(value, (datetime.date, datetime.time)):
        # A TOML date can stay in a spec's document where every config overrides it (a base value the sweep sets).
        return value.isoformat()
    return value


def spec_hash(spec: Spec) -> str:
    """sha256 of the parsed document, so comments, formatting and key order do not change it."""
    return hashlib.sha256(canonical_json(spec.document).encode()).hexdigest()


# ---- messages ----


def _key_path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            key = part if BARE_TOML_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            text += f".{key}" if text else key
    return text


def _spec_error(path: Path, problems: list[Problem]) -> SpecError:
    """One error for all problems: the first line names the file, each problem its key path."""
    lines = list(dict.fromkeys(f"{where}: {what}" for where, what in problems))
    if len(lines) == 1:
        return SpecError(f"{path}: {lines[0]}")
    return SpecError(f"{path}: {len(lines)} problems\n" + "\n".join(f"  {line}" for line in lines))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"the string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (datetime.date, datetime.time)):
        return f"the date/time {value.isoformat()}"
    return repr(value)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _model_at(parts: Iterable[str | int]) -> type[BaseModel] | None:
    """The pydantic model of the table at a key path, or None where there is no such table."""
    model: type[BaseModel] | None = SpecDocument
    for part in parts:
        fields = model.model_fields
        if not isinstance(part, str) or part not in fields:
            return None
        model = _model_class(fields[part].annotation)
        if model is None:
            return None
    return model


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        sub_model = _model_class(info.annotation)
        dotted = f"{prefix}{name}"
        keys.extend(_leaf_keys(sub_model, dotted + ".") if sub_model else [dotted])
    return keys


def _is_under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


SWEEPABLE_KEYS = tuple(
    key for key in _leaf_keys(SpecDocument) if not _is_under(key, EXPERIMENT_WIDE_KEYS + RUNTIME_KEYS)
)
EXPECTED_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
}
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
BOUND_NAMES = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _explain(error: ErrorDetails) -> str:
    """What is wrong at the error's location and how to fix it, in one line."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    context = error.get("ctx", {})
    if kind == "missing":
        return _explain_missing(loc)
    if kind == "extra_forbidden":
        return _explain_unknown_key(loc, is_table=isinstance(value, dict))
    if kind in EXPECTED_TYPES:
        expected = EXPECTED_TYPES[kind]
        fix = "remove the quotes" if _valid_unquoted(value, kind) else f"write {expected} instead"
        return f"expected {expected}, got {_show(value)}; {fix}"
    if kind in BOUNDS:
        bound = f"{BOUNDS[kind]} {context[BOUND_NAMES[kind]]}"
        return f"must be {bound} (got {_show(value)}); change it to a value {bound}"
    if kind == "literal_error":
        return f"must be one of {context['expected']} (got {_show(value)})"
    if kind == "value_error":
        return str(context["error"])
    return f"{error['msg'][:1].lower()}{error['msg'][1:]} (got {_show(value)})"


def _valid_unquoted(value: Any, kind: str) -> bool:
    """Whether a string would be the value expected without its quotes ("4" for an integer; not "yes" for true)."""
    expected = {"int_type": (int,), "float_type": (int, float), "bool_type": (bool,)}.get(kind)
    if expected is None or not isinstance(value, str):
        return False
    try:
        unquoted = tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        return False
    return isinstance(unquoted, expected) and (kind == "bool_type" or not isinstance(unquoted, bool))


def _explain_missing(loc: KeyPath) -> str:
    section = _model_at(loc)
    if section is not None:
        required = [name for name, info in section.model_fields.items() if info.is_required()]
        return f"section missing; add the [{_key_path(loc)}] table with {', '.join(f'{key} = …' for key in required)}"
    return f"required but missing; add `{loc[-1]} = …` to [{_key_path(loc[:-1])}]"


def _quoted_dotted_key_hint(key: str) -> str:
    # `"train.sigma" = 1` is one key with a dot in its name; unquoted, `train.sigma = 1` sets sigma in train.
    return f"; to set a nested key write it without quotes: {key} = …" if "." in key else ""


def _explain_unknown_key(loc: KeyPath, is_table: bool) -> str:
    key, parent = str(loc[-1]), loc[:-1]
    known = list(_model_at(parent).model_fields)
    if parent:
        suggestion = _suggestion(key, known)
        # A key of another table written here (train.n0, data.arch, train.eta) is moved, not renamed.
        homes = [] if suggestion else [leaf.rpartition(".")[0] for leaf in _leaf_keys(SpecDocument)
                                       if leaf.rpartition(".")[2] == key and leaf.rpartition(".")[0]]
        if homes:
            return (f"unknown key; {key} belongs in {' or '.join(f'[{home}]' for home in homes)}, so move it there "
                    f"([{_key_path(parent)}] takes: {', '.join(known)})")
        return (
            f"unknown key{suggestion}{_quoted_dotted_key_hint(key)}; rename or remove it "
            f"([{_key_path(parent)}] takes: {', '.join(known)})"
        )
    homes = [section for section in known if key in _model_at((section,)).model_fields]
    if homes:
        return f"unknown top-level key; {key} belongs in [{homes[0]}], so move it below that header"
    known += ["sweep", "variant"]
    return (
        f"unknown {'section' if is_table else 'top-level key'}{_suggestion(key, known)}"
        f"{_quoted_dotted_key_hint(key)}; rename or remove it "
        f"(a spec has the sections: {', '.join(known)})"
    )


def _non_finite_numbers(value: Any, where: KeyPath) -> list[Problem]:
    if isinstance(value, float) and not math.isfinite(value):
        return [(_key_path(where), f"{value} is not allowed; use a finite number")]
    if isinstance(value, dict):
        return [problem for key, item in value.items() for problem in _non_finite_numbers(item, where + (key,))]
    if isinstance(value, list):
        return [problem for index, item in enumerate(value) for problem in _non_finite_numbers(item, where + (index,))]
    return []


# ---- variants and sweeps ----


def _read_variants(tables: Any) -> tuple[list[_Variant], list[Problem]]:
    if tables is None:
        return [_Variant(None, {}, ())], []
    if not isinstance(tables, list) or not tables or not all(isinstance(table, dict) for table in tables):
        return [], [("variant", "must be an array of tables; start each variant with [[variant]]")]
    problems: list[Problem] = []
    variants = []
    first_index_of: dict[str, int] = {}
    first_index_ignoring_case: dict[str, int] = {}
    for index, table in enumerate(tables):
        where: KeyPath = ("variant", index)
        name = table.get("name")
        if name is None:
            problems.append((_key_path(where), 'has no name; add name = "…" (it names the configs of the variant)'))
        elif not isinstance(name, str):
            problem = f"expected a string, got {_show(name)}; write the name in quotes"
            problems.append((_key_path(where + ("name",)), problem))
        else:
            try:
                _check_safe_name(name)
            except ValueError as error:
                problems.append((_key_path(where + ("name",)), str(error)))
            if name in first_index_of:
                problems.append((
                    _key_path(where + ("name",)),
                    f'"{name}" already names variant[{first_index_of[name] + 1}]; give each variant its own name',
                ))
            elif name.casefold() in first_index_ignoring_case:
                first = first_index_ignoring_case[name.casefold()]
                problems.append((
                    _key_path(where + ("name",)),
                    f'"{name}" differs from variant[{first + 1}]\'s "{tables[first]["name"]}" only in case: their '
                    "results files would be one file where names ignore case (macOS, Windows); give each variant a "
                    "name of its own",
                ))
            first_index_of.setdefault(name, index)
            first_index_ignoring_case.setdefault(name.casefold(), index)
        overrides = {key: value for key, value in table.items() if key != "name"}
        problems.extend(_variant_key_problems(overrides, where))
        variants.append(_Variant(name, overrides, where))
    return variants, problems


def _variant_key_problems(overrides: dict[str, Any], where: KeyPath) -> list[Problem]:
    problems = []
    for key, value in overrides.items():
        if key in ("report", "analyze"):
            problem = f"{key} settings are shared by the whole experiment; set them in [{key}]"
            problems.append((_key_path(where + (key,)), problem))
        elif key == "sweep":
            problems.append((_key_path(where + (key,)), "a variant cannot have its own sweep; put it in [sweep]"))
        elif key not in VARIANT_SECTIONS:
            problems.append((
                _key_path(where + (key,)),
                f"unknown key{_suggestion(key, VARIANT_SECTIONS)}{_quoted_dotted_key_hint(key)}; "
                f"a variant takes name and the tables {', '.join(VARIANT_SECTIONS)}",
            ))
        elif key == "experiment" and isinstance(value, dict):
            problems.extend(
                (
                    _key_path(where + (key, sub_key)),
                    "only experiment.seed may differ between variants; the name and description are shared",
                )
                for sub_key in value
                if sub_key != "seed"
            )
    return problems


def _variant_values_the_sweep_replaces(variants: list[_Variant], sweep: _Sweep) -> list[Problem]:
    swept_at = {swept.key: swept.where for group in [*sweep.zips, sweep.grid] for swept in group}
    return [
        (_key_path(variant.where + tuple(dotted.split("."))),
         f"is swept too ({_key_path(swept_at[dotted])}), and the sweep's values replace the variant's in every "
         f"config, so this value would never be used; remove it, or take {dotted} out of the sweep and set it in "
         "each variant")
        for variant in variants for dotted, _ in _flattened(variant.overrides) if dotted in swept_at
    ]


# The same for an empty [sweep.grid] and an empty [[sweep.zip]], which would both sweep nothing.
EMPTY_SWEEP_TABLE = 'is empty; add lists of values, e.g. "train.sigma" = [0.25, 0.5], or remove it'


def _read_sweep(table: Any) -> tuple[_Sweep, list[Problem]]:
    sweep = _Sweep()
    if table is None:
        return sweep, []
    if not isinstance(table, dict):
        return sweep, [("sweep", "must be a table; write [sweep.grid] or [[sweep.zip]]")]
    problems: list[Problem] = [
        (
            _key_path(("sweep", key)),
            f"unknown key{_suggestion(key, ('grid', 'zip'))}; [sweep] takes grid (a table of lists: every "
            "combination) and zip ([[sweep.zip]] tables of equal-length lists, varied together)",
        )
        for key in table
        if key not in ("grid", "zip")
    ]
    if not table:
        problems.append(("sweep", "is empty; add a [sweep.grid] table or [[sweep.zip]] tables of lists, or remove it"))
    swept_at: dict[str, KeyPath] = {}
    zip_tables = table.get("zip", [])
    if not isinstance(zip_tables, list) or not all(isinstance(group, dict) for group in zip_tables):
        problems.append(("sweep.zip", "must be an array of tables; write [[sweep.zip]] above each group of lists"))
    elif "zip" in table and not zip_tables:
        problems.append(("sweep.zip", "is an empty array; add [[sweep.zip]] tables of lists, or remove it"))
    else:
        for index, group_table in enumerate(zip_tables):
            where: KeyPath = ("sweep", "zip", index)
            problems_before = len(problems)
            group = _read_swept_table(group_table, where, swept_at, problems)
            lengths = {swept.key: len(swept.values) for swept in group}
            if not group_table:
                problems.append((_key_path(where), EMPTY_SWEEP_TABLE))
            elif len(set(lengths.values())) > 1:
                shown = ", ".join(f'"{key}" has {length}' for key, length in lengths.items())
                problem = f"lists of different lengths ({shown}); give them all the same length"
                problems.append((_key_path(where), problem))
            elif group:
                # Rows are compared only when all of the group's lists were read: a key left out could set them apart.
                if len(problems) == problems_before:
                    problems.extend(_zip_repeat_problems(group, where))
                sweep.zips.append(group)
    grid_table = table.get("grid", {})
    if not isinstance(grid_table, dict):
        problems.append(("sweep.grid", 'must be a table of lists, e.g. [sweep.grid] "train.sigma" = [0.25, 0.5]'))
    elif "grid" in table and not grid_table:
        problems.append(("sweep.grid", EMPTY_SWEEP_TABLE))
    else:
        sweep.grid = _read_swept_table(grid_table, ("sweep", "grid"), swept_at, problems)
        for swept in sweep.grid:
            problems.extend(_repeat_problems([(value,) for value in swept.values], swept.where))
    return sweep, problems


def _zip_repeat_problems(group: list[_SweptKey], where: KeyPath) -> list[Problem]:
    """A zip group repeats a config when one position's values equal another's in every list; a value repeated
    in one list alone is fine while another list tells the two positions apart."""
    if len(group) == 1:
        return _repeat_problems([(value,) for value in group[0].values], group[0].where)
    return _repeat_problems(list(zip(*(swept.values for swept in group))), where, [swept.key for swept in group])


def _repeat_problems(rows: list[tuple[Any, ...]], where: KeyPath, keys: list[str] | None = None) -> list[Problem]:
    """The first repeated row of sweep values (one value per key of `keys`; a single value without keys), which
    would add no config of its own and so shrink the sweep."""
    first_position: dict[tuple[Any, ...], int] = {}
    for position, row in enumerate(rows):
        # 1 and 1.0 (and 0.25 and 0.250) are the same setting, but true is not 1.
        identity = tuple((isinstance(value, bool), value) for value in row)
        if identity not in first_position:
            first_position[identity] = position
            continue
        first = rows[first_position[identity]]
        shown = [_show(a) if _show(a) == _show(b) else f"{_show(a)} and {_show(b)}" for a, b in zip(first, row)]
        items = f"items {first_position[identity] + 1} and {position + 1}"
        if keys is None:
            return [(_key_path(where), f"{items} are the same value ({shown[0]}); give each value once")]
        shown = [f'"{key}" = {value}' for key, value in zip(keys, shown)]
        return [(_key_path(where), f"{items} are the same in every list ({', '.join(shown)}); make them differ in "
                                   "at least one list or remove one")]
    return []


def _flattened(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted key → value; `train.sigma = [...]` unquoted makes nested tables, which mean the same."""
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from _flattened(value, dotted)
        else:
            yield dotted, value


def _read_swept_table(
    table: dict[str, Any], where: KeyPath, swept_at: dict[str, KeyPath], problems: list[Problem]
) -> list[_SweptKey]:
    keys = []
    for key, values in _flattened(table):
        location = where + (key,)
        if key in swept_at:
            problem = f"already swept at {_key_path(swept_at[key])}; sweep each key in one place"
        else:
            problem = _sweep_key_problem(key) or _sweep_values_problem(values)
        if problem:
            problems.append((_key_path(location), problem))
        else:
            swept_at[key] = location
            keys.append(_SweptKey(key, location, values))
    return keys


def _sweep_key_problem(key: str) -> str | None:
    if key in SWEEPABLE_KEYS:
        return None
    if _is_under(key, EXPERIMENT_WIDE_KEYS):
        return ("is shared by the whole experiment and cannot be swept; set it once in its table, or write one "
                "spec per value")
    if key == "certify.batch_size":
        return ("bounds the rows of a forward pass, which changes no certificate, so it cannot be swept; set it in "
                "[certify]")
    if key in RUNTIME_KEYS:
        return "says where the data live, which changes no result, so it cannot be swept; set it in [data]"
    if _model_at(key.split(".")) is not None:
        example = next(swept for swept in SWEEPABLE_KEYS if swept.startswith(key + "."))
        return f'names a table, not a setting; sweep one of its keys, e.g. "{example}"'
    return (
        f"no such setting{_suggestion(key, SWEEPABLE_KEYS)}; sweep keys are full dotted keys such as "
        '"train.sigma" or "train.smoothmix.eta"'
    )


def _sweep_values_problem(values: Any) -> str | None:
    if not isinstance(values, list):
        return f"expected a list of values, got {_show(values)}; put the values in brackets, e.g. [1.0, 2.0]"
    if not values:
        return "empty list; give at least one value"
    if any(isinstance(value, (list, dict)) for value in values):
        return "the values must be single values, not arrays or tables"
    return None


def _refuse_huge_sweep(path: Path, variants: list[_Variant], sweep: _Sweep) -> None:
    factors = [len(variants)]
    factors += [len(group[0].values) for group in sweep.zips]
    factors += [len(swept.values) for swept in sweep.grid]
    count = math.prod(factors)
    if count > MAX_CONFIGS:
        raise SpecError(
            f"{path}: sweep: expands to {count:,} configs ({' × '.join(map(str, factors))}: variants, then each "
            f"zip and grid list), more than the limit of {MAX_CONFIGS:,}; sweep fewer values or split the "
            "experiment into several specs"
        )


def _assignments(sweep: _Sweep) -> Iterator[list[tuple[_SweptKey, Any]]]:
    """Every combination of sweep values: zip groups step together, grid keys independently."""
    axes = [
        [[(swept, swept.values[step]) for swept in group] for step in range(len(group[0].values))]
        for group in sweep.zips
    ]
    axes += [[[(swept, value)] for value in swept.values] for swept in sweep.grid]
    for combination in itertools.product(*axes):
        yield [pair for step in combination for pair in step]


# ---- expansion ----


def _merge_into(target: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _assign(target: dict[str, Any], dotted_key: str, value: Any) -> None:
    *tables, leaf = dotted_key.split(".")
    for key in tables:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            return  # the spec has a value where a table belongs; validation reports it there
    target[leaf] = value


def _contains(tree: Any, loc: KeyPath) -> bool:
    for part in loc:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and isinstance(part, int) and part < len(tree):
            tree = tree[part]
        else:
            return False
    return True


def _source(loc: KeyPath, variant: _Variant, assignments: list[tuple[_SweptKey, Any]]) -> str:
    """Where in the file the value at `loc` of a merged document came from: the sweep, the variant or the base."""
    for swept, _ in assignments:
        parts = tuple(swept.key.split("."))
        if loc[: len(parts)] == parts:
            return _key_path(swept.where + loc[len(parts):])
    if _contains(variant.overrides, loc):
        return _key_path(variant.where + loc)
    return _key_path(loc)


def _arch_problem(document: SpecDocument) -> str | None:
    arch, dataset = document.model.arch, DATASETS[document.data.dataset]
    if arch is None or ARCHS[arch] in (None, dataset.input_shape):
        return None
    fitting = [name for name, shape in ARCHS.items() if shape in (None, dataset.input_shape)]
    shape_text = "×".join(map(str, ARCHS[arch]))
    return (
        f"{arch} takes {shape_text} inputs but {dataset.name} images are {'×'.join(map(str, dataset.input_shape))}; "
        f"use one of: {', '.join(fitting)} (leave model.arch out for {dataset.default_arch})"
    )


def _validate(
    path: Path, base: dict[str, Any], variant: _Variant, assignments: list[tuple[_SweptKey, Any]]
) -> SpecDocument:
    merged = copy.deepcopy(base)
    _merge_into(merged, variant.overrides)
    for swept, value in assignments:
        _assign(merged, swept.key, value)
    try:
        document = SpecDocument.model_validate(merged, strict=True)
    except ValidationError as error:
        # An unknown key first: a misspelt required key ("sigam") is also reported missing, and the unknown key's
        # "did you mean" says what to fix.
        details = sorted(error.errors(), key=lambda detail: detail["type"] != "extra_forbidden")
        problems = [(_source(detail["loc"], variant, assignments), _explain(detail)) for detail in details]
        raise _spec_error(path, problems) from None
    arch_problem = _arch_problem(document)
    if arch_problem:
        raise _spec_error(path, [(_source(("model", "arch"), variant, assignments), arch_problem)])
    return document


# Config names become file names (results/<experiment>/<config>.tsv); most file systems allow 255 bytes.
MAX_CONFIG_NAME_BYTES = 200
# Every name a spec gives a config: a variant's safe name, then "-<label>=<value>" per swept key (a float may
# bring "+" and "e": "sigma=1e+30").
CONFIG_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._=+-]{{0,{MAX_CONFIG_NAME_BYTES - 1}}}")

# Settings added after jobs existed, with the value every job had before: a config holds such a setting only
# when it differs from that value, so the keys of older jobs keep their meaning. For amp and precision this is
# also the default; lr_decay's default became the reference's "one_epoch_late", which therefore enters the key.
VALUES_WHEN_ABSENT: dict[tuple[str, str], Any] = {
    ("train", "amp"): False,
    ("train", "lr_decay"): "on_time",
    ("certify", "precision"): "fp32",
}


def _canonical_config(document: SpecDocument) -> dict[str, Any]:
    dataset = DATASETS[document.data.dataset]
    recipe, train, certify = dataset.recipe, document.train, document.certify

    def chosen(value: Any, recipe_value: Any) -> Any:
        return recipe_value if value is None else value

    config = {
        "seed": document.experiment.seed,
        "data": {"dataset": dataset.name},
        "model": {"arch": document.model.arch or dataset.default_arch},
        "train": {
            "method": train.method,
            "sigma": train.sigma,
            "epochs": chosen(train.epochs, recipe.epochs),
            "batch_size": chosen(train.batch_size, recipe.batch_size),
            "lr": float(chosen(train.lr, recipe.lr)),
            "lr_step": chosen(train.lr_step, recipe.lr_step),
            "lr_gamma": float(chosen(train.lr_gamma, recipe.lr_gamma)),
            "momentum": float(chosen(train.momentum, recipe.momentum)),
            "weight_decay": float(chosen(train.weight_decay, recipe.weight_decay)),
            "params": train.method_params().model_dump(),
        },
        "certify": {
            "sigma": chosen(certify.sigma, train.sigma),
            "n0": certify.n0,
            "n": certify.n,
            "alpha": certify.alpha,
            "max_samples": certify.max_samples,
            "skip": certify.skip,
            "split": certify.split,
        },
    }
    for (section, name), value_when_absent in VALUES_WHEN_ABSENT.items():
        value = getattr({"train": train, "certify": certify}[section], name)
        if value != value_when_absent:
            config[section][name] = value
    if document.analyze is not None:
        config["analyze"] = {**document.analyze.model_dump(), "sigma": chosen(document.analyze.sigma, train.sigma)}
    return config


def _applies(dotted_key: str, document: SpecDocument) -> bool:
    section, table, *_ = dotted_key.split(".")
    return not (section == "train" and table in METHOD_PARAMS and table != document.train.method)


def config_value(dotted_key: str, config: dict[str, Any]) -> Any:
    """A setting of a resolved config by its spec key ("train.lr_decay"); a setting the config lacks because it
    was added later has the value every job had before it (VALUES_WHEN_ABSENT)."""
    parts = dotted_key.split(".")
    if parts == ["experiment", "seed"]:
        return config["seed"]
    if parts[0] == "train" and parts[1] in METHOD_PARAMS:
        return config["train"]["params"][parts[2]]
    return config[parts[0]].get(parts[1], VALUES_WHEN_ABSENT.get((parts[0], parts[1])))


def _labels(dotted_keys: list[str]) -> dict[str, str]:
    labels = {}
    for key in dotted_keys:
        parts = key.split(".")
        # "sigma" alone reads as the training noise; certify's and analyze's keep their section.
        shortest = 2 if parts[-1] == "sigma" and key != "train.sigma" else 1
        for length in range(shortest, len(parts) + 1):
            label = ".".join(parts[-length:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in dotted_keys):
                break
        labels[key] = label
    return labels


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def _runtime(document: SpecDocument, path: Path) -> dict[str, Any]:
    root = document.data.root
    if root is not None:
        root = os.path.abspath(path.parent / expand_home(root, f"{path}: data.root"))
    return {"data_root": root, "download": document.data.download, "certify_batch_size": document.certify.batch_size}


def _expand(
    path: Path, base: dict[str, Any], variants: list[_Variant], sweep: _Sweep
) -> tuple[SpecDocument, list[ResolvedConfig]]:
    swept_keys = sweep.ordered_keys()
    labels = _labels(swept_keys)
    configs: list[ResolvedConfig] = []
    seen: set[str] = set()
    first_document: SpecDocument | None = None
    applied: set[str] = set()  # swept keys that some config uses
    all_trained: set[str] = set()
    for variant in variants:
        trained: set[str] = set()
        configs_before = len(configs)
        for assignments in _assignments(sweep):
            document = _validate(path, base, variant, assignments)
            if first_document is None:
                first_document = document
            trained.add(document.train.method)
            applied.update(key for key in swept_keys if _applies(key, document))
            config = _canonical_config(document)
            identity = canonical_json(config)
            if identity in seen:
                continue
            seen.add(identity)
            swept = {key: config_value(key, config) for key in swept_keys if _applies(key, document)}
            name_parts = [variant.name] if variant.name else []
            name_parts += [f"{labels[key]}={_format_value(value)}" for key, value in swept.items()]
            name = "-".join(name_parts) or IMPLICIT_VARIANT_NAME
            if len(name.encode()) > MAX_CONFIG_NAME_BYTES:
                where = _key_path(variant.where) if variant.name else "sweep"
                raise _spec_error(path, [(where, f"gives the config name {name[:60]!r}… of {len(name.encode())} "
                                          f"bytes, more than the {MAX_CONFIG_NAME_BYTES} a results file name may "
                                          "have; shorten the variant name or sweep fewer keys")])
            configs.append(ResolvedConfig(name, config, swept, _runtime(document, path)))
        _check_variant(path, variant, trained, new_configs=len(configs) - configs_before)
        all_trained |= trained
    problems = _untrained_method_tables(base, (), all_trained, "the configs train",
                                        'set train.method = "{method}" (in [train], a variant or the sweep) or remove '
                                        "this table")
    # A swept key that no config uses would silently collapse its sweep into one config.
    problems += [
        (_key_path(swept.where), f"applies to no config: the configs train {' and '.join(sorted(all_trained))}; "
                                 f"set train.method = \"{swept.key.split('.')[1]}\" (in [train], a variant or "
                                 "the sweep) or drop this key")
        for swept in sweep.grid + [item for group in sweep.zips for item in group]
        if swept.key not in applied
    ]
    if problems:
        raise _spec_error(path, problems)
    return first_document, configs


def _untrained_method_tables(
    table: dict[str, Any], where: KeyPath, trained: set[str], trainers: str, fix: str
) -> list[Problem]:
    """The method parameter tables in `table` (the base spec or a variant) of methods that none of its configs
    trains: they change no config, so the likeliest cause is a forgotten train.method. `fix` may name {method}."""
    return [
        (_key_path(where + ("train", method)),
         f"sets {method}'s parameters, but {trainers} {' and '.join(sorted(trained))}; {fix.format(method=method)}")
        for method in METHOD_PARAMS
        if method not in trained and _contains(table, ("train", method))
    ]


def _check_variant(path: Path, variant: _Variant, trained: set[str], new_configs: int) -> None:
    """A variant must train the method whose parameters it sets, and add at least one config of its own."""
    problems = _untrained_method_tables(variant.overrides, variant.where, trained, "the variant trains",
                                        'add train.method = "{method}" to the variant')
    if problems:
        raise _spec_error(path, problems)
    if variant.name is not None and new_configs == 0:
        raise _spec_error(path, [(_key_path(variant.where), f"variant {variant.name!r} gives only configs that earlier "
                                  "variants already give (settings outside the job keys, such as data.root, do not "
                                  "make a config); make it differ or remove it")])
