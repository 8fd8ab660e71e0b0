"""Published numbers of SmoothMix (Jeong et al., NeurIPS 2021), shipped as data, and matching our results to them.

`smx/reference_data/paper_tables.json` holds Table 2 (MNIST), Table 3 (CIFAR-10) and the MNIST sigma = 1.0
ablations. Each row gives the dataset, sigma, method, the paper's label, the hyperparameters that identify its
setting, the ACR and the certified accuracy in percent as printed (an empty list where only the ACR is
published). In Python, certified accuracy is a fraction, as everywhere else in smx. Torch-free.

A result matches a published row when its dataset, method and sigma (of training and of certification) are the
row's and so is every hyperparameter the row names; the method's defaults fill in those a result does not state
(an imported log states only what was given on the command line). The first matching row in file order wins, so
a setting that is both in Table 2 and in an ablation is compared with Table 2. Architecture, training schedule and
the hyperparameters a row does not name do not decide the match: `training_differences` says where they differ
from the paper's, so that a report can say its comparison is only indicative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from smx.db.models import Job, JobParent
from smx.db.store import Store, open_store
from smx.science.catalog import DATASETS, TrainRecipe
from smx.science.methods.params import METHOD_PARAMS
from smx.spec import TrainSection, config_value

REFERENCE_FILE = "reference_data/paper_tables.json"
# Radii of the grid are multiples of the table's step; this much floating-point slack still counts as one.
RADIUS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PublishedRow:
    table: str  # "Table 2", "Ablation: eta", ...
    source: str  # "paper", or how the numbers were obtained ("recomputed from the authors' published ... logs")
    dataset: str
    arch: str  # the architecture the paper trained, by smx's name
    sigma: float
    method: str
    label: str  # as the paper writes the row: "SmoothMix (eta=1) + one-step adversary"
    params: Mapping[str, Any]  # the hyperparameters that identify the setting
    # Other settings of the paper's run where they are not smx's defaults: method hyperparameters (SmoothAdv's
    # warmup = 10), schedule values that are not its dataset's recipe (MACER*'s 440 epochs) and lr_decay.
    recipe: Mapping[str, Any]
    # What no smx config reproduces of the paper's run ("" when nothing): its comparisons are always indicative.
    caveat: str
    acr: float
    certified_accuracy: tuple[float, ...]  # fractions at radius 0, radius_step, 2 * radius_step, ...
    radius_step: float
    # CERTIFY with the table's n and alpha cannot certify a larger radius: past it the paper prints 0.0.
    max_certifiable_radius: float

    @property
    def origin(self) -> str:
        """What a report calls the row's numbers: the paper's own, or the authors' logs where the paper only plots
        them (its ablations)."""
        return "paper" if self.source == "paper" else "authors' logs"

    def accuracy_at(self, radius: float) -> float | None:
        """Published certified accuracy at a radius, as a fraction; None where the paper gives none."""
        if not self.certified_accuracy:
            return None
        position = radius / self.radius_step
        index = round(position)
        if abs(position - index) > RADIUS_TOLERANCE:
            return None
        if index < len(self.certified_accuracy):
            return self.certified_accuracy[index]
        return 0.0 if radius > self.max_certifiable_radius else None


@dataclass(frozen=True)
class Setting:
    """What a certified result was trained and certified as: what a published row is matched on."""

    dataset: str
    method: str
    sigma: float  # of training
    certify_sigma: float
    params: Mapping[str, Any]  # the method's hyperparameters as stated; defaults fill in the rest when matching
    arch: str | None = None  # None where the store does not know it (an imported log)
    # The training schedule (epochs, lr, lr_step, lr_gamma, batch_size, momentum, weight_decay), as far as known.
    schedule: Mapping[str, Any] = field(default_factory=dict)
    lr_decay: str | None = None  # None where the store does not know it (an imported log)

    def resolved_params(self) -> dict[str, Any]:
        """The hyperparameters with the method's defaults for those not stated."""
        defaults = METHOD_PARAMS[self.method]().model_dump() if self.method in METHOD_PARAMS else {}
        return {**defaults, **self.params}


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: the one it certifies when every one of n noisy samples votes for the
    top class (the Clopper-Pearson lower bound on its probability is then alpha ** (1 / n))."""
    # Imported here: scipy costs every `smx query` and `smx report` a few tenths of a second, and only a comparison
    # with the paper needs it.
    from smx.science.bounds import certified_radius, lower_confidence_bound

    return certified_radius(lower_confidence_bound(n, n, alpha), sigma)


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return json.loads(resources.files("smx").joinpath(REFERENCE_FILE).read_text(encoding="utf-8"))


def published_protocol() -> dict[str, Any]:
    """How the paper certified every published row: n0, n, alpha and the number of test images."""
    return dict(_document()["certify"])


@lru_cache(maxsize=1)
def published_rows() -> tuple[PublishedRow, ...]:
    """Every published row, in file order."""
    document = _document()
    step, certify = document["radius_step"], document["certify"]
    return tuple(
        PublishedRow(
            table=table["title"], source=table["source"], dataset=table["dataset"], arch=table["arch"],
            sigma=row["sigma"],
            method=row["method"], label=row["label"], params=row["params"], recipe=row.get("recipe", {}),
            caveat=row.get("caveat", ""), acr=row["acr"],
            certified_accuracy=tuple(percent / 100 for percent in row["certified_accuracy_percent"]),
            radius_step=step,
            max_certifiable_radius=max_certifiable_radius(row["sigma"], certify["n"], certify["alpha"]),
        )
        for table in document["tables"]
        for row in table["rows"]
    )


def _same(ours: Any, published: Any) -> bool:
    if isinstance(ours, (int, float)) and isinstance(published, (int, float)) and not isinstance(ours, bool):
        return math.isclose(ours, published, rel_tol=1e-9, abs_tol=1e-12)
    return bool(ours == published)


def find_published(setting: Setting) -> PublishedRow | None:
    """The published row of the same setting, or None (e.g. for mnist-mini, which the paper does not use)."""
    params = setting.resolved_params()
    for row in published_rows():
        if (row.dataset == setting.dataset and row.method == setting.method and _same(setting.sigma, row.sigma)
                and _same(setting.certify_sigma, row.sigma)
                and all(key in params and _same(params[key], value) for key, value in row.params.items())):
            return row
    return None


def nearest_published(setting: Setting) -> tuple[PublishedRow, list[str]] | None:
    """For a setting that no row matches: the row of its dataset, method and training sigma whose named
    hyperparameters it differs from least (the first in file order among equals), and how it differs, e.g.
    ["steps = 2 (paper: 4)"]; None where the paper has no row of that dataset, method and sigma."""
    params = setting.resolved_params()

    def differences(row: PublishedRow) -> list[str]:
        found = [] if _same(setting.certify_sigma, row.sigma) else [
            f"certify sigma = {setting.certify_sigma:g} (paper: {row.sigma:g})"]
        return found + [f"{key} = {params.get(key)} (paper: {value})" for key, value in row.params.items()
                        if not (key in params and _same(params[key], value))]

    candidates = [row for row in published_rows() if row.dataset == setting.dataset
                  and row.method == setting.method and _same(setting.sigma, row.sigma)]
    if not candidates:
        return None
    nearest = min(candidates, key=lambda row: len(differences(row)))
    return nearest, differences(nearest)


def training_differences(setting: Setting, row: PublishedRow) -> list[str]:
    """Where a setting that matches `row` was trained otherwise than the paper, as far as the store knows: another
    architecture, a schedule other than the paper's run (its recipe, else the dataset's, the reference code's), or a
    hyperparameter the row does not name set to other than the paper's run (its recipe, else smx's default; e.g. no
    warm-up), and what no smx run reproduces (the row's caveat), e.g.
    ["cifar_resnet20 (paper: cifar_resnet110)", "epochs = 10", "warmup = 1"]."""
    differences = [f"{setting.arch} (paper: {row.arch})"] if setting.arch not in (None, row.arch) else []
    schedule_names = [item.name for item in fields(TrainRecipe)]
    paper_schedule = {**asdict(DATASETS[row.dataset].recipe),
                      **{name: value for name, value in row.recipe.items() if name in schedule_names}}
    differences += [f"{name} = {setting.schedule[name]:g}" for name in schedule_names
                    if name in setting.schedule and not _same(setting.schedule[name], paper_schedule[name])]
    paper_lr_decay = row.recipe.get("lr_decay", TrainSection.model_fields["lr_decay"].default)
    if setting.lr_decay not in (None, paper_lr_decay):
        differences.append(f"lr_decay = {setting.lr_decay}")
    defaults = METHOD_PARAMS[setting.method]().model_dump() if setting.method in METHOD_PARAMS else {}
    paper_run = {**defaults, **row.recipe}
    # Stated values only: an imported log's unstated hyperparameters are unknown, not smx's defaults.
    differences += [f"{name} = {value}" for name, value in setting.params.items()
                    if name not in row.params and name in paper_run and not _same(value, paper_run[name])]
    return differences + ([row.caveat] if row.caveat else [])


def setting_of(session: Session, certify_key: str) -> Setting | None:
    """The setting of a certify job: dataset and certification sigma from its own config, method, training sigma
    and hyperparameters from its train job's (an imported log has no train job: its config holds them)."""
    certify = session.get(Job, certify_key)
    if certify is None:
        return None
    train = session.scalar(
        select(Job).join(JobParent, JobParent.parent_key == Job.key)
        .where(JobParent.child_key == certify_key, Job.kind == "train")
    )
    trained = train.config if train is not None else certify.config
    train_config = trained.get("train")
    if train_config is None:
        return None
    return Setting(dataset=certify.config["data"]["dataset"], method=train_config["method"],
                   sigma=train_config["sigma"], certify_sigma=certify.config["certify"]["sigma"],
                   params=train_config.get("params", {}), arch=trained.get("model", {}).get("arch"),
                   schedule={item.name: train_config[item.name] for item in fields(TrainRecipe)
                             if item.name in train_config},
                   lr_decay=config_value("train.lr_decay", train.config) if train is not None else None)


def certification_differences(images: int, certification: Mapping[str, Any]) -> list[str]:
    """How a certification differs from the paper's, from what its job recorded: ["200 images", "n = 1,000"]."""
    paper = published_protocol()
    differences = [f"{images:,} images"] if images != paper["test_images"] else []
    differences += [f"{name} = {certification[name]:,}" for name in ("n0", "n")
                    if name in certification and certification[name] != paper[name]]
    if "alpha" in certification and certification["alpha"] != paper["alpha"]:
        differences.append(f"alpha = {certification['alpha']:g}")
    if certification.get("split", "test") != "test":
        differences.append(f"the {certification['split']} split")
    return differences


def protocol_differences(setting: Setting, row: PublishedRow, images: int, certification: Mapping[str, Any]
                         ) -> list[str]:
    """How a config compared with `row` was trained or certified otherwise than the paper's run, as far as the store
    knows (see training_differences and certification_differences); empty where its comparison is like for like."""
    return training_differences(setting, row) + certification_differences(images, certification)


@dataclass(frozen=True)
class PaperAcrValue:
    acr: float
    indicative: bool  # trained or certified otherwise than the paper's row: see training_differences


class PaperAcr:
    """The published ACR of a `results` row's setting, or None: fills the TUI's "paper ACR" column.

    The store is opened on first use, so the TUI can start before `smx submit` has created it.
    """

    def __init__(self, location: str | None) -> None:
        self.location = location
        self._store: Store | None = None

    def __call__(self, row: Mapping[str, Any]) -> PaperAcrValue | None:
        if self._store is None:
            self._store = open_store(self.location, create=False)
        with self._store.read_session() as session:
            setting = setting_of(session, row["certify_key"])
            published = find_published(setting) if setting is not None else None
            if setting is None or published is None:
                return None
            certify = session.get(Job, row["certify_key"])
            certification = certify.config.get("certify", {}) if certify is not None else {}
        differences = protocol_differences(setting, published, row["num_samples"], certification)
        return PaperAcrValue(published.acr, indicative=bool(differences))
