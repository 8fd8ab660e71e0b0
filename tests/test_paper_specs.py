"""The specs under experiments/: each validates, and the paper's tables and ablations have as many configs as rows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from smx.plan import build_plan
from smx.spec import config_value, load_spec
from tests.conftest import REPO, smx_command

EXPERIMENTS = REPO / "experiments"
SPECS = sorted(EXPERIMENTS.glob("*.toml"))
# Rows of each table or ablation of SmoothMix (Jeong et al. 2021) that a spec reproduces.
PAPER_CONFIG_COUNTS = {
    "mnist_table2": 27,  # 9 rows x 3 sigmas
    "cifar10_table3": 14,  # 7 rows x 2 sigmas
    "mnist_ablation_eta": 6,  # 5 etas and the Gaussian baseline
    "mnist_ablation_steps": 4,
    "mnist_ablation_maxnorm": 5,
    "mnist_ablation_noise_samples": 4,
    "mnist_mini_methods": 6,  # every method once
}


def configs_of(name: str) -> dict[str, dict]:
    return {resolved.name: resolved.config for resolved in load_spec(EXPERIMENTS / f"{name}.toml").configs}


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_every_spec_validates(path: Path):
    result = subprocess.run(smx_command("validate", str(path)), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok ")


@pytest.mark.parametrize(("name", "count"), PAPER_CONFIG_COUNTS.items())
def test_paper_specs_have_one_config_per_row(name: str, count: int):
    spec = load_spec(EXPERIMENTS / f"{name}.toml")
    plan = build_plan(spec)
    print(f"{name}: {len(spec.configs)} configs")
    assert len(spec.configs) == count
    assert sum(job.kind == "train" for job in plan.jobs) == count


@pytest.mark.parametrize(("name", "table"), [("mnist_table2", "Table 2"), ("cifar10_table3", "Table 3")])
def test_each_config_of_a_paper_table_spec_matches_its_own_row_of_that_table(name: str, table: str):
    from smx.reference import Setting, find_published, published_rows

    matched = []
    for config in configs_of(name).values():
        train = config["train"]
        row = find_published(Setting(dataset=config["data"]["dataset"], method=train["method"], sigma=train["sigma"],
                                     certify_sigma=config["certify"]["sigma"], params=train["params"]))
        assert row is not None and row.table == table, config
        matched.append((row.sigma, row.label))
    assert sorted(matched) == sorted((row.sigma, row.label) for row in published_rows() if row.table == table)


@pytest.mark.parametrize(("name", "count"), PAPER_CONFIG_COUNTS.items())
def test_dry_run_lists_one_train_job_per_row_and_creates_no_store(name: str, count: int, tmp_path: Path):
    store = tmp_path / "store"
    # A wide terminal, so that rich prints every table row on one line.
    environment = {**os.environ, "SMX_STORE": str(store), "COLUMNS": "200"}
    result = subprocess.run(
        smx_command("submit", str(EXPERIMENTS / f"{name}.toml"), "--dry-run"),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    train_rows = [line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("train ")]
    assert len(train_rows) == count
    assert not store.exists()


def test_table2_encodes_the_mnist_recipes():
    configs = configs_of("mnist_table2")
    for config in configs.values():
        train = config["train"]
        assert (train["epochs"], train["batch_size"], train["lr"], train["lr_step"]) == (90, 256, 0.01, 30)
        assert config["data"]["dataset"] == "mnist" and config["model"]["arch"] == "lenet"
        certify = config["certify"]
        assert (certify["n0"], certify["n"], certify["alpha"], certify["skip"], certify["max_samples"]) == (
            100, 100_000, 0.001, 1, None
        )
    rows = {
        (config["train"]["method"], config["train"]["sigma"]): config["train"]["params"] for config in configs.values()
    }
    for sigma in (0.25, 0.5, 1.0):
        assert rows[("stability", sigma)] == {"lbd": 2.0}
        assert rows[("smoothadv", sigma)] == {"epsilon": 255 / 256, "steps": 10, "noise_samples": 4, "warmup": 10}
        assert rows[("macer", sigma)] == {
            "noise_samples": 16, "beta": 16.0, "lbd": 16.0 if sigma < 1 else 6.0, "gamma": 8.0, "deferred_epochs": 31
        }
        assert rows[("consistency", sigma)]["lbd"] == (10.0 if sigma == 0.25 else 5.0)
        assert rows[("consistency", sigma)]["noise_samples"] == 2 and not rows[("consistency", sigma)]["adversarial"]
    smoothmix_rows = sorted(
        (train["sigma"], train["params"]["eta"], train["params"]["steps"], train["params"]["mix_step"])
        for train in (config["train"] for config in configs.values())
        if train["method"] == "smoothmix"
    )
    steps = {(0.25, 1.0): 3, (0.25, 5.0): 2, (0.5, 1.0): 4, (0.5, 5.0): 4, (1.0, 1.0): 8, (1.0, 5.0): 8}
    expected = [(sigma, eta, steps[sigma, eta], mix_step) for sigma, eta in sorted(steps) for mix_step in (0, 1)]
    assert smoothmix_rows == expected


def test_table3_encodes_the_cifar_recipes():
    configs = configs_of("cifar10_table3")
    by_row = {
        (config["train"]["method"], config["train"]["sigma"], config["train"]["params"].get("mix_step")): config
        for config in configs.values()
    }
    assert len(by_row) == 14
    for config in configs.values():
        train = config["train"]
        if train["method"] == "macer":  # the recipe of Zhai et al.'s released models, which the paper reports
            assert (train["epochs"], train["batch_size"], train["lr"], train["lr_step"], train["weight_decay"],
                    config_value("train.lr_decay", config)) == (440, 64, 0.01, 200, 5e-4, "on_time")
        else:
            assert (train["epochs"], train["batch_size"], train["lr"], train["lr_step"]) == (150, 256, 0.1, 50)
        assert config["model"]["arch"] == "cifar_resnet110"
        assert (config["certify"]["skip"], config["certify"]["max_samples"]) == (1, None)  # the full test set
    assert by_row[("smoothmix", 0.25, 1)]["train"]["params"]["alpha"] == 0.5
    assert by_row[("smoothmix", 0.5, 0)]["train"]["params"]["alpha"] == 1.0
    assert by_row[("consistency", 0.25, None)]["train"]["params"]["lbd"] == 20.0
    assert by_row[("macer", 0.5, None)]["train"]["params"]["deferred_epochs"] == 0
    for sigma in (0.25, 0.5):  # the paper's fixed SmoothAdv configuration
        assert by_row[("smoothadv", sigma, None)]["train"]["params"] == {
            "epsilon": 255 / 256, "steps": 10, "noise_samples": 8, "warmup": 10}


def test_ablations_share_their_base_config_with_table2():
    """The ablations vary one setting of Table 2's sigma = 1.0, eta = 1 SmoothMix row, which they all contain."""
    base = configs_of("mnist_table2")["smoothmix-eta1-sigma1"]
    assert configs_of("mnist_ablation_eta")["smoothmix-eta=1"] == base
    assert configs_of("mnist_ablation_steps")["alpha=1-steps=8"] == base
    assert configs_of("mnist_ablation_maxnorm")["unbounded"] == base
    assert configs_of("mnist_ablation_noise_samples")["noise_samples=4"] == base
    assert configs_of("mnist_ablation_eta")["gaussian"] == configs_of("mnist_table2")["gaussian-sigma1"]
