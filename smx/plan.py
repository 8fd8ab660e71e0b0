"""Resolved configs → the job graph: train → certify → aggregate, each job named by a content key. Torch-free.

A spec with [analyze] also gets one analyze job per trained model, a child of its train job. The aggregate
does not wait for them: it summarises certificates only, and its key is the same with or without [analyze].

A key is the sha256 of the canonical JSON of what the job computes from (its kind, inputs, parents and
CODE_VERSION), so editing a spec re-keys exactly the jobs whose results would change: a new certify.n
re-keys that config's certify job and the aggregate, not the training. Runtime settings (where the data
live; for a certify job, the most rows of a forward pass) travel in `PlannedJob.runtime` and never enter a key.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from smx.spec import ResolvedConfig, Spec, canonical_json, resolve_configs, spec_hash

# Bump when a job's results change meaning for the same inputs (a fixed bug in training or
# certification, a new log format): every key changes, so nothing stale is reused.
CODE_VERSION = 1

JobKind = Literal["train", "certify", "analyze", "aggregate"]
# The runtime settings (ResolvedConfig.runtime) each kind of job reads.
RUNTIME_OF: dict[JobKind, tuple[str, ...]] = {
    "train": ("data_root", "download"),
    "certify": ("data_root", "download", "certify_batch_size"),
    "analyze": ("data_root", "download"),
}


def content_key(kind: JobKind, inputs: dict[str, Any], parents: Iterable[str]) -> str:
    """sha256 hex of the canonical JSON of {kind, inputs, parents (sorted), version}."""
    payload = {"kind": kind, "inputs": inputs, "parents": sorted(parents), "version": CODE_VERSION}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass
class PlannedJob:
    key: str
    kind: JobKind
    name: str  # "train/<config>", "certify/<config>", "analyze/<config>" or "aggregate/<experiment>"
    inputs: dict[str, Any]
    parents: list[str]  # keys of the jobs whose results this one reads, sorted
    config_name: str | None  # the (first) config the job belongs to; None for the aggregate
    runtime: dict[str, Any] = field(default_factory=dict)  # its kind's RUNTIME_OF settings; {} for the aggregate
    swept: dict[str, Any] = field(default_factory=dict)  # that config's ResolvedConfig.swept; {} for the aggregate


@dataclass
class Plan:
    experiment: str
    description: str
    spec_hash: str
    spec_text: str
    jobs: list[PlannedJob]  # topological: every train job, every certify job, every analyze job, the aggregate
    configs: list[ResolvedConfig]


def _config_job(kind: JobKind, inputs: dict[str, Any], parents: list[str], resolved: ResolvedConfig) -> PlannedJob:
    """A train, certify or analyze job of one config; its runtime settings and swept values ride outside the key."""
    return PlannedJob(
        key=content_key(kind, inputs, parents),
        kind=kind,
        name=f"{kind}/{resolved.name}",
        inputs=inputs,
        parents=parents,
        config_name=resolved.name,
        runtime={name: resolved.runtime[name] for name in RUNTIME_OF[kind]},
        swept=copy.deepcopy(resolved.swept),
    )


def build_plan(spec: Spec) -> Plan:
    """One train job per distinct training setup, one certify job per config, one analyze job per trained model
    when the spec has [analyze], one aggregate."""
    configs = resolve_configs(spec)
    train_jobs: dict[str, PlannedJob] = {}
    certify_jobs: dict[str, PlannedJob] = {}
    analyze_jobs: dict[str, PlannedJob] = {}
    aggregate_configs = []
    for resolved in configs:
        config = resolved.config
        train_inputs = copy.deepcopy({key: config[key] for key in ("seed", "data", "model", "train")})
        train = _config_job("train", train_inputs, [], resolved)
        # Configs that differ only in how they are certified share one trained model.
        train_jobs.setdefault(train.key, train)
        certify_inputs = copy.deepcopy({key: config[key] for key in ("certify", "data")})
        certify = _config_job("certify", certify_inputs, [train.key], resolved)
        certify_jobs.setdefault(certify.key, certify)
        if "analyze" in config:
            analyze_inputs = copy.deepcopy({key: config[key] for key in ("analyze", "data")})
            analyze = _config_job("analyze", analyze_inputs, [train.key], resolved)
            analyze_jobs.setdefault(analyze.key, analyze)
        aggregate_configs.append({
            "name": resolved.name,
            "certify_key": certify.key,
            "method": config["train"]["method"],
            "sigma": config["train"]["sigma"],  # the training noise level; certify.sigma is in the certify inputs
            "swept": copy.deepcopy(resolved.swept),
        })
    aggregate_inputs = {
        "experiment": spec.experiment.name,
        "radii": list(spec.report.radii),
        "configs": sorted(aggregate_configs, key=lambda entry: entry["name"]),
    }
    certify_keys = sorted(certify_jobs)
    aggregate_key = content_key("aggregate", aggregate_inputs, certify_keys)
    aggregate = PlannedJob(
        aggregate_key, "aggregate", f"aggregate/{spec.experiment.name}", aggregate_inputs, certify_keys, None
    )
    return Plan(
        experiment=spec.experiment.name,
        description=spec.experiment.description,
        spec_hash=spec_hash(spec),
        spec_text=spec.text,
        jobs=[*train_jobs.values(), *certify_jobs.values(), *analyze_jobs.values(), aggregate],
        configs=configs,
    )
