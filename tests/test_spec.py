"""Specs: the shipped experiments validate, every kind of mistake gets one clear message, sweeps expand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smx.spec
from smx.errors import UserError
from smx.plan import build_plan
from smx.science.metrics import DEFAULT_RADII
from smx.spec import SpecError, load_spec, parse_spec, resolve_configs, spec_hash

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.toml"
ABLATION = REPO / "experiments" / "mnist_ablation_eta.toml"

MINIMAL = textwrap.dedent("""
    [experiment]
    name = "tiny"

    [data]
    dataset = "mnist-mini"

    [train]
    sigma = 0.5
""")

# Two variants over a zip and a grid: the fixture for expansion, names and error locations.
SWEEP_SPEC = textwrap.dedent("""
    [experiment]
    name = "sweep"

    [data]
    dataset = "mnist-mini"

    [train]
    sigma = 0.5

    [[variant]]
    name = "gaussian"
    train.method = "gaussian"

    [[variant]]
    name = "smoothmix"
    train.method = "smoothmix"

    [[sweep.zip]]
    "train.sigma" = [0.25, 0.5]
    "train.smoothmix.steps" = [2, 4]

    [sweep.grid]
    "train.smoothmix.eta" = [1, 2.0, 4.5]
""")


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


def names(text: str) -> list[str]:
    return [config.name for config in resolve_configs(parse_spec(text))]


# ---- the shipped experiments ----


def test_quickstart_resolves_to_the_documented_canonical_config() -> None:
    configs = resolve_configs(load_spec(QUICKSTART))
    assert [config.name for config in configs] == ["gaussian", "smoothmix"]
    # The example in docs/architecture.md, verbatim.
    assert configs[1].config == {
        "seed": 0,
        "data": {"dataset": "mnist-mini"},
        "model": {"arch": "lenet"},
        "train": {
            "method": "smoothmix", "sigma": 0.5, "epochs": 10, "batch_size": 256, "lr": 0.01,
            "lr_step": 30, "lr_gamma": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "lr_decay": "one_epoch_late",
            "params": {"eta": 5.0, "alpha": 1.0, "steps": 4, "noise_samples": 2, "mix_step": 0,
                       "max_norm": None, "warmup": 10},
        },
        "certify": {"sigma": 0.5, "n0": 100, "n": 1000, "alpha": 0.001, "max_samples": 200, "skip": 1,
                    "split": "test"},
    }
    assert configs[0].config["train"]["params"] == {"noise_samples": 1}
    assert configs[0].runtime == {"data_root": None, "download": False, "certify_batch_size": None}


def test_mnist_ablation_is_the_papers_eta_sweep_with_a_gaussian_baseline() -> None:
    spec = load_spec(ABLATION)
    configs = resolve_configs(spec)
    assert [config.name for config in configs] == [
        "gaussian", "smoothmix-eta=1", "smoothmix-eta=2", "smoothmix-eta=4", "smoothmix-eta=8", "smoothmix-eta=16",
    ]
    etas = (1.0, 2.0, 4.0, 8.0, 16.0)
    assert [config.swept for config in configs[1:]] == [{"train.smoothmix.eta": eta} for eta in etas]
    assert configs[0].swept == {}
    for config in configs:
        assert config.config["data"] == {"dataset": "mnist"}
        assert config.config["model"] == {"arch": "lenet"}
        train = config.config["train"]
        recipe = (train["sigma"], train["lr"], train["epochs"], train["lr_step"], train["batch_size"])
        assert recipe == (1.0, 0.01, 90, 30, 256)
        assert config.config["certify"] == {
            "sigma": 1.0, "n0": 100, "n": 100_000, "alpha": 0.001,
            "max_samples": None, "skip": 1, "split": "test",
        }
    params = configs[3].config["train"]["params"]
    smoothmix = (params["eta"], params["noise_samples"], params["alpha"], params["steps"], params["mix_step"])
    assert smoothmix == (4.0, 4, 1.0, 8, 0)


# ---- defaults ----


def test_unset_settings_come_from_the_dataset_recipe_and_the_documented_defaults() -> None:
    (config,) = resolve_configs(parse_spec(MINIMAL))
    assert config.name == "base"
    assert config.config == {
        "seed": 0,
        "data": {"dataset": "mnist-mini"},
        "model": {"arch": "lenet"},
        "train": {"method": "gaussian", "sigma": 0.5, "epochs": 90, "batch_size": 256, "lr": 0.01, "lr_step": 30,
                  "lr_gamma": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "lr_decay": "one_epoch_late",
                  "params": {"noise_samples": 1}},
        "certify": {"sigma": 0.5, "n0": 100, "n": 100_000, "alpha": 0.001,
                    "max_samples": None, "skip": 1, "split": "test"},
    }
    assert parse_spec(MINIMAL).report.radii == list(DEFAULT_RADII)


def test_default_architecture_follows_the_dataset() -> None:
    text = MINIMAL.replace('"mnist-mini"', '"cifar10"')
    (config,) = resolve_configs(parse_spec(text))
    assert config.config["model"] == {"arch": "cifar_resnet110"}
    assert config.config["train"]["lr"] == 0.1 and config.config["train"]["epochs"] == 150


def test_certify_sigma_may_differ_from_the_training_sigma() -> None:
    (config,) = resolve_configs(parse_spec(MINIMAL + "[certify]\nsigma = 0.25\n"))
    assert config.config["certify"]["sigma"] == 0.25
    assert config.config["train"]["sigma"] == 0.5


def test_report_radii_are_sorted_and_each_is_kept_apart_in_the_results() -> None:
    spec = parse_spec(MINIMAL + "[report]\nradii = [1.0, 0, 0.5, 0.000001]\n")
    assert spec.report.radii == [0.0, 0.000001, 0.5, 1.0]
    for radii, message in (
            ("[1.0, 0, 1]", "report.radii: 1.0 is given twice; give each radius once"),
            ("[0.1234561, 0.1234564]", "report.radii: 0.1234564 and 0.1234561 are the same to the 6 decimals that "
                                       "results keep (0.123456); give each radius once"),
            ("[1e-9]", "report.radii: 1e-09 is 0 to the 6 decimals that results keep; give 0.0 or a radius of at "
                       "least 1e-06"),
            ("[1e300]", "report.radii: 1e+300 is over 1000, far past any radius CERTIFY certifies (about 3.8 sigma at "
                        "n = 100,000); give radii up to 1000")):
        with pytest.raises(SpecError) as error:
            parse_spec(MINIMAL + f"[report]\nradii = {radii}\n")
        assert message in str(error.value)


def test_runtime_settings_stay_out_of_the_config_and_root_is_relative_to_the_spec(tmp_path: Path) -> None:
    text = MINIMAL.replace('dataset = "mnist-mini"', 'dataset = "mnist"\nroot = "../data"\ndownload = true')
    (config,) = resolve_configs(load_spec(write(tmp_path, text + "[certify]\nbatch_size = 4096\n")))
    assert config.runtime == {"data_root": str(tmp_path.parent / "data"), "download": True,
                              "certify_batch_size": 4096}
    assert config.config["data"] == {"dataset": "mnist"}
    assert "batch_size" not in config.config["certify"]


# ---- sweeps ----


def test_variants_times_zip_times_grid_with_only_the_swept_keys_that_apply() -> None:
    configs = resolve_configs(parse_spec(SWEEP_SPEC))
    # Gaussian ignores the SmoothMix keys, so its 2 × 3 grid points collapse to the 2 zip rows.
    assert [config.name for config in configs] == [
        "gaussian-sigma=0.25",
        "gaussian-sigma=0.5",
        "smoothmix-sigma=0.25-eta=1-steps=2",
        "smoothmix-sigma=0.25-eta=2-steps=2",
        "smoothmix-sigma=0.25-eta=4.5-steps=2",
        "smoothmix-sigma=0.5-eta=1-steps=4",
        "smoothmix-sigma=0.5-eta=2-steps=4",
        "smoothmix-sigma=0.5-eta=4.5-steps=4",
    ]
    assert configs[0].swept == {"train.sigma": 0.25}
    assert configs[2].swept == {"train.sigma": 0.25, "train.smoothmix.eta": 1.0, "train.smoothmix.steps": 2}
    params = configs[5].config["train"]["params"]
    assert (params["steps"], params["eta"]) == (4, 1.0)
    assert configs[5].config["certify"]["sigma"] == 0.5


def test_spec_without_variants_names_configs_by_their_swept_values() -> None:
    text = MINIMAL + '[sweep.grid]\n"train.sigma" = [0.25, 0.5]\n"experiment.seed" = [0, 1]\n'
    # Name parts follow the schema (seed before train), not the file.
    assert names(text) == ["seed=0-sigma=0.25", "seed=1-sigma=0.25", "seed=0-sigma=0.5", "seed=1-sigma=0.5"]


def test_labels_keep_enough_of_the_key_to_stay_distinct() -> None:
    text = MINIMAL + '[sweep.grid]\n"train.sigma" = [0.5]\n"certify.sigma" = [0.25, 0.5]\n'
    assert names(text) == ["train.sigma=0.5-certify.sigma=0.25", "train.sigma=0.5-certify.sigma=0.5"]


def test_unquoted_dotted_sweep_keys_mean_the_same_as_quoted_ones() -> None:
    quoted = MINIMAL + '[sweep.grid]\n"train.sigma" = [0.25, 0.5]\n'
    unquoted = MINIMAL + "[sweep.grid]\ntrain.sigma = [0.25, 0.5]\n"
    assert resolve_configs(parse_spec(quoted)) == resolve_configs(parse_spec(unquoted))


def test_identical_configs_are_merged_keeping_the_first_name() -> None:
    text = SWEEP_SPEC.replace('"train.sigma" = [0.25, 0.5]', '"train.sigma" = [0.5, 0.5]')
    # One Gaussian config instead of six; SmoothMix keeps both zip rows, which differ in steps.
    assert names(text) == ["gaussian-sigma=0.5"] + [
        f"smoothmix-sigma=0.5-eta={eta}-steps={steps}" for steps in (2, 4) for eta in ("1", "2", "4.5")
    ]


def test_mistakes_that_would_silently_shrink_a_sweep_are_errors(tmp_path: Path) -> None:
    unused = error_of(tmp_path, MINIMAL + '[sweep.grid]\n"train.smoothmix.eta" = [1.0, 2.0]\n')
    assert 'sweep.grid."train.smoothmix.eta": applies to no config: the configs train gaussian; ' \
           'set train.method = "smoothmix"' in unused
    wrong_method = error_of(tmp_path, MINIMAL + '[[variant]]\nname = "g"\n[[variant]]\nname = "s"\n'
                                                'train.smoothmix = { eta = 5.0 }\n')
    assert "variant[2].train.smoothmix: sets smoothmix's parameters, but the variant trains gaussian; " \
           'add train.method = "smoothmix" to the variant' in wrong_method
    nothing_new = error_of(tmp_path, MINIMAL + '[[variant]]\nname = "a"\n[[variant]]\nname = "b"\n'
                                               'data.root = "/data"\n')
    assert "variant[2]: variant 'b' gives only configs that earlier variants already give" in nothing_new
    # A method swept alongside its parameters uses them in some configs: fine.
    mixed = MINIMAL + '[sweep.grid]\n"train.method" = ["gaussian", "smoothmix"]\n"train.smoothmix.eta" = [1.0, 2.0]\n'
    assert names(mixed) == ["method=gaussian", "method=smoothmix-eta=1", "method=smoothmix-eta=2"]
    forgotten_method = error_of(tmp_path, MINIMAL + "smoothmix = { eta = 2.0 }\n")
    assert forgotten_method == (
        f"{tmp_path / 'spec.toml'}: train.smoothmix: sets smoothmix's parameters, but the configs train gaussian; "
        'set train.method = "smoothmix" (in [train], a variant or the sweep) or remove this table'
    )
    repeated = error_of(tmp_path, MINIMAL + '[sweep.grid]\n"train.sigma" = [0.25, 0.25]\n')
    assert repeated == (f"{tmp_path / 'spec.toml'}: sweep.grid.\"train.sigma\": items 1 and 2 are the same value "
                        "(0.25); give each value once")


SMOOTHMIX_IN_BASE = MINIMAL + "[train.smoothmix]\neta = 2.0\n"


@pytest.mark.parametrize(
    ("addition", "expected_names"),
    [
        pytest.param('[[variant]]\nname = "g"\n[[variant]]\nname = "s"\ntrain.method = "smoothmix"\n',
                     ["g", "s"], id="variant"),
        pytest.param('[sweep.grid]\n"train.method" = ["gaussian", "smoothmix"]\n',
                     ["method=gaussian", "method=smoothmix"], id="grid"),
        pytest.param('[[sweep.zip]]\n"train.method" = ["gaussian", "smoothmix"]\n"train.sigma" = [0.25, 0.5]\n',
                     ["method=gaussian-sigma=0.25", "method=smoothmix-sigma=0.5"], id="zip"),
    ],
)
def test_base_method_parameters_are_accepted_when_a_variant_or_the_sweep_trains_the_method(
    addition: str, expected_names: list[str]
) -> None:
    configs = resolve_configs(parse_spec(SMOOTHMIX_IN_BASE + addition))
    assert [config.name for config in configs] == expected_names
    assert configs[0].config["train"]["params"] == {"noise_samples": 1}
    assert configs[1].config["train"]["params"]["eta"] == 2.0


def test_a_value_repeated_in_one_zip_list_is_fine_while_another_list_differs() -> None:
    text = MINIMAL + '[[sweep.zip]]\n"train.sigma" = [0.25, 0.25, 0.5]\n"certify.n" = [10, 20, 10]\n'
    assert names(text) == ["sigma=0.25-n=10", "sigma=0.25-n=20", "sigma=0.5-n=10"]


def test_zip_rows_are_not_called_repeats_while_one_of_their_lists_has_a_mistake(tmp_path: Path) -> None:
    message = error_of(tmp_path, MINIMAL + '[[sweep.zip]]\n"train.sigma" = [0.5, 0.5]\n"certify.nn" = [10, 20]\n')
    assert 'sweep.zip[1]."certify.nn": no such setting (did you mean "certify.n"?)' in message
    assert "same" not in message


def test_every_shipped_experiment_loads() -> None:
    # tests/test_paper_specs.py runs `smx validate` on each; this in-process check is what the spec rules need.
    experiments = sorted((REPO / "experiments").glob("*.toml"))
    assert len(experiments) >= 10
    for path in experiments:
        assert resolve_configs(load_spec(path)), path


def test_a_certify_sigma_label_is_not_mistaken_for_the_training_sigma() -> None:
    assert names(MINIMAL + '[sweep.grid]\n"certify.sigma" = [0.25, 0.5]\n') == [
        "certify.sigma=0.25", "certify.sigma=0.5"]


def test_config_names_too_long_for_a_file_name_are_refused(tmp_path: Path) -> None:
    grid = "".join(f'"train.{key}" = [{value}]\n' for key, value in (
        ("epochs", 90), ("batch_size", 256), ("lr", 0.01), ("lr_step", 30), ("lr_gamma", 0.1), ("momentum", 0.9),
        ("weight_decay", 0.0001), ("sigma", 0.5)))
    text = MINIMAL + f'[[variant]]\nname = "{"v" * 64}"\n[sweep.grid]\n' + grid + '"certify.n" = [100000]\n'
    text += '"certify.n0" = [100]\n"certify.alpha" = [0.001]\n"certify.max_samples" = [1000]\n"certify.skip" = [1]\n'
    message = error_of(tmp_path, text)
    assert "variant[1]: gives the config name" in message and "more than the 200 a results file name" in message


def test_integer_and_float_spellings_resolve_to_the_same_config() -> None:
    smoothmix = MINIMAL + 'method = "smoothmix"\n'
    integer = parse_spec(smoothmix.replace("sigma = 0.5", "sigma = 1") + "[train.smoothmix]\neta = 1\n")
    floating = parse_spec(smoothmix.replace("sigma = 0.5", "sigma = 1.0") + "[train.smoothmix]\neta = 1.0\n")
    assert resolve_configs(integer)[0].config == resolve_configs(floating)[0].config
    train = resolve_configs(integer)[0].config["train"]
    assert isinstance(train["sigma"], float) and isinstance(train["params"]["eta"], float)


def test_variants_may_change_the_seed_and_the_data_root() -> None:
    text = MINIMAL + '[[variant]]\nname = "a"\nexperiment.seed = 1\n[[variant]]\nname = "b"\ndata.root = "/data"\n'
    configs = resolve_configs(parse_spec(text))
    assert [config.config["seed"] for config in configs] == [1, 0]
    assert configs[1].runtime["data_root"] == "/data"


def test_a_variant_value_that_the_sweep_would_replace_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + ('[sweep.grid]\n"train.lr" = [0.01, 0.02]\n[[variant]]\nname = "slow"\ntrain.lr = 0.001\n'
                      '[[variant]]\nname = "fast"\ntrain = { lr = 0.1, epochs = 2 }\n')
    message = error_of(tmp_path, text)
    for variant in ("variant[1].train.lr", "variant[2].train.lr"):
        assert f"{variant}: is swept too (sweep.grid.\"train.lr\")" in message
    assert "take train.lr out of the sweep and set it in each variant" in message


def test_huge_sweeps_are_refused_before_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def expansion_must_not_run(*arguments: object) -> None:
        raise AssertionError("the sweep was expanded")

    monkeypatch.setattr(smx.spec, "_expand", expansion_must_not_run)
    values = ", ".join(str(value) for value in range(1, 101))
    text = SWEEP_SPEC + f'"certify.n" = [{values}]\n"certify.n0" = [{values}]\n'
    started = time.perf_counter()
    message = error_of(tmp_path, text)
    assert time.perf_counter() - started < 1.0
    assert "sweep: expands to 120,000 configs (2 × 2 × 3 × 100 × 100" in message
    assert "limit of 10,000" in message and "split the experiment" in message


def test_a_sweep_at_the_limit_is_accepted() -> None:
    values = ", ".join(str(value) for value in range(1, 101))
    text = MINIMAL + f'[sweep.grid]\n"certify.n" = [{values}]\n"certify.n0" = [{values}]\n'
    assert len(resolve_configs(parse_spec(text))) == 10_000


# ---- hashes ----


REORDERED_SWEEP_SPEC = """
# the same spec, sections and keys in another order, other spacing, comments
[[sweep.zip]]
"train.smoothmix.steps" = [ 2, 4 ]   # steps
"train.sigma"           = [ 0.25, 0.5 ]

[train]
sigma=0.5

[sweep.grid]
"train.smoothmix.eta" = [
  1,
  2.0,
  4.5,
]

[data]
dataset = 'mnist-mini'

[[variant]]
train = { method = "gaussian" }
name = "gaussian"

[[variant]]
name = "smoothmix"
[variant.train]
method = "smoothmix"

[experiment]
name = "sweep"
"""


def test_a_toml_date_that_every_config_overrides_still_hashes() -> None:
    dated = parse_spec(MINIMAL.replace("sigma = 0.5", "sigma = 1979-05-27") + '[sweep.grid]\n"train.sigma" = [0.5]\n')
    assert len(spec_hash(dated)) == 64
    assert build_plan(dated).configs[0].config["train"]["sigma"] == 0.5


def test_spec_hash_ignores_key_order_formatting_and_comments() -> None:
    original, reordered = parse_spec(SWEEP_SPEC), parse_spec(REORDERED_SWEEP_SPEC)
    assert spec_hash(original) == spec_hash(reordered)
    assert resolve_configs(original) == resolve_configs(reordered)
    changed = parse_spec(SWEEP_SPEC.replace("[1, 2.0, 4.5]", "[1, 2.0, 4.6]"))
    assert spec_hash(changed) != spec_hash(original)


# ---- mistakes ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            MINIMAL.replace("sigma = 0.5", "sigma = "),
            ["TOML syntax error", "line 9, column 9", "fix the syntax"],
            id="syntax",
        ),
        pytest.param(
            MINIMAL + "[certfy]\nn = 10\n",
            ["certfy: unknown section", 'did you mean "certify"?', "rename or remove it"],
            id="unknown-section",
        ),
        pytest.param(
            MINIMAL + "lr_stp = 3\n",
            ["train.lr_stp: unknown key", 'did you mean "lr_step"?', "[train] takes: method, sigma"],
            id="unknown-key",
        ),
        pytest.param(
            MINIMAL + "[certify]\nN0 = 10\n",
            ["certify.N0: unknown key", 'did you mean "n0"?'],
            id="wrong-case",
        ),
        pytest.param(
            MINIMAL.replace("sigma = 0.5", "sigma = 0.5\nn0 = 50"),
            ["train.n0: unknown key; n0 belongs in [certify], so move it there"],
            id="key-of-another-table",
        ),
        pytest.param(
            MINIMAL.replace("sigma = 0.5", "sigma = 0.5\neta = 2.0"),
            ["train.eta: unknown key; eta belongs in [train.smoothmix] or [train.consistency], so move it there"],
            id="method-parameter-outside-its-table",
        ),
        pytest.param(
            MINIMAL.replace("sigma = 0.5", 'sigma = "0.5"'),
            ['train.sigma: expected a number, got the string "0.5"', "remove the quotes"],
            id="quoted-number",
        ),
        pytest.param(
            MINIMAL + 'amp = "yes"\n',  # without its quotes, yes is no TOML value at all
            ['train.amp: expected true or false, got the string "yes"; write true or false instead'],
            id="quoted-word-for-bool",
        ),
        pytest.param(
            MINIMAL + 'amp = "true"\n',
            ['train.amp: expected true or false, got the string "true"; remove the quotes'],
            id="quoted-bool",
        ),
        pytest.param(
            MINIMAL + "epochs = 10.5\n",
            ["train.epochs: expected an integer, got 10.5", "write an integer"],
            id="float-for-int",
        ),
        pytest.param(
            MINIMAL + "[certify]\nmax_samples = true\n",
            ["certify.max_samples: expected an integer, got true"],
            id="bool-for-int",
        ),
        pytest.param(
            MINIMAL.replace("sigma = 0.5", "sigma = -1.0"),
            ["train.sigma: must be > 0.0 (got -1.0)", "change it to a value > 0.0"],
            id="negative-sigma",
        ),
        pytest.param(
            MINIMAL + "[certify]\nn = 100000000000000000000000\n",  # would overflow the job's int64 counting
            ["certify.n: must be <= 1000000000000 (got 100000000000000000000000)"],
            id="n-too-large",
        ),
        pytest.param(
            MINIMAL + "[certify]\nalpha = 1.5\n",
            ["certify.alpha: must be < 1.0 (got 1.5)"],
            id="alpha-range",
        ),
        pytest.param(
            MINIMAL.replace("sigma = 0.5", "sigma = nan"),
            ["train.sigma: nan is not allowed", "finite number"],
            id="nan",
        ),
        pytest.param(
            MINIMAL + 'method = "smoothmx"\n',
            [
                "train.method: unknown training method 'smoothmx'",
                'did you mean "smoothmix"?',
                "choose one of: gaussian, smoothmix",
            ],
            id="unknown-method",
        ),
        pytest.param(
            MINIMAL.replace('"mnist-mini"', '"cifar"'),
            ["data.dataset: unknown dataset 'cifar'", "choose one of: mnist-mini, mnist"],
            id="unknown-dataset",
        ),
        pytest.param(
            MINIMAL + '[model]\narch = "resnet"\n',
            ["model.arch: unknown architecture 'resnet'", 'did you mean "resnet50"?', "lenet"],
            id="unknown-arch",
        ),
        pytest.param(
            MINIMAL + '[model]\narch = "cifar_resnet20"\n',
            [
                "model.arch: cifar_resnet20 takes 3×32×32 inputs but mnist-mini images are 1×28×28",
                "use one of: lenet, resnet50",
            ],
            id="arch-shape",
        ),
        pytest.param(
            MINIMAL + '[certify]\nsplit = "val"\n',
            ["certify.split: must be one of 'test' or 'train'"],
            id="split",
        ),
        pytest.param(
            MINIMAL.replace("sigma = 0.5", ""),
            ["train.sigma: required but missing", "add `sigma = …` to [train]"],
            id="missing-sigma",
        ),
        pytest.param(
            MINIMAL.replace('[data]\ndataset = "mnist-mini"', ""),
            ["data: section missing", "add the [data] table with dataset = …"],
            id="missing-section",
        ),
        pytest.param(
            MINIMAL.replace('name = "tiny"', 'name = "my run/1"'),
            ["experiment.name: 'my run/1' is not a safe name", "e.g. 'my-run-1'"],
            id="unsafe-name",
        ),
        pytest.param(
            MINIMAL.replace('name = "tiny"', 'name = "' + "x" * 65 + '"'),
            ["experiment.name:", "1 to 64"],
            id="long-name",
        ),
        pytest.param(
            MINIMAL + "[train.smoothmix]\neta = -1\n",
            ["train.smoothmix.eta: must be >= 0.0 (got -1)"],
            id="method-param-range",
        ),
        pytest.param(
            MINIMAL + "[train.smoothmx]\neta = 1\n",
            ['train.smoothmx: unknown key (did you mean "smoothmix"?)'],
            id="unknown-method-table",
        ),
        pytest.param(
            MINIMAL + "[report]\nradii = [-1.0, 1.0]\n",
            ["report.radii: radii must be >= 0 (got -1.0)"],
            id="negative-radius",
        ),
        pytest.param(MINIMAL.replace("[train]", "model = 3\n[train]"), ["data.model: unknown key"], id="misplaced-key"),
        pytest.param(
            "sigma = 0.5\n" + MINIMAL,
            ["sigma: unknown top-level key; sigma belongs in [train]"],
            id="key-above-headers",
        ),
        pytest.param(
            MINIMAL + '"lr.x" = 1\n',
            ['train."lr.x": unknown key', "without quotes: lr.x = …"],
            id="quoted-dotted-key",
        ),
        pytest.param(
            MINIMAL + "[[variant]]\ntrain.method = \"smoothmix\"\n",
            ['variant[1]: has no name; add name = "…"'],
            id="variant-without-name",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n',
            ['variant[2].name: "a" already names variant[1]', "give each variant its own name"],
            id="duplicate-variant",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "Base"\n[[variant]]\nname = "bASE"\n',
            ['variant[2].name: "bASE" differs from variant[1]\'s "Base" only in case', "(macOS, Windows)"],
            id="variants-named-alike-but-for-case",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a b"\n',
            ["variant[1].name: 'a b' is not a safe name"],
            id="unsafe-variant-name",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a"\n[[variant]]\nname = "b"\ntrain.smoothmix.eta = -5.0\n',
            ["variant[2].train.smoothmix.eta: must be >= 0.0 (got -5.0)"],
            id="variant-value",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a"\ntrain.sigmaa = 1.0\n',
            ['variant[1].train.sigmaa: unknown key (did you mean "sigma"?)'],
            id="variant-unknown-key",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a"\nreport.radii = [1.0]\n',
            ["variant[1].report: report settings are shared", "set them in [report]"],
            id="variant-report",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a"\nexperiment.name = "b"\n',
            ["variant[1].experiment.name: only experiment.seed may differ"],
            id="variant-experiment-name",
        ),
        pytest.param(
            MINIMAL + '[[variant]]\nname = "a"\ntrian.sigma = 1.0\n',
            ['variant[1].trian: unknown key (did you mean "train"?)'],
            id="variant-unknown-section",
        ),
        pytest.param(
            MINIMAL + '[variant]\nname = "a"\n',
            ["variant: must be an array of tables", "[[variant]]"],
            id="variant-not-array",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.smoothmix.etaa" = [1.0]\n',
            ['sweep.grid."train.smoothmix.etaa": no such setting (did you mean "train.smoothmix.eta"?)'],
            id="sweep-unknown-key",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.smoothmix" = [1.0]\n',
            ['sweep.grid."train.smoothmix": names a table, not a setting', 'e.g. "train.smoothmix.eta"'],
            id="sweep-table",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"data.root" = ["a", "b"]\n',
            ['sweep.grid."data.root": says where the data live', "set it in [data]"],
            id="sweep-runtime-key",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"certify.batch_size" = [1000, 4096]\n',
            ['sweep.grid."certify.batch_size": bounds the rows of a forward pass, which changes no certificate',
             "set it in [certify]"],
            id="sweep-certify-batch-size",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"experiment.name" = ["a", "b"]\n',
            ['sweep.grid."experiment.name": is shared by the whole experiment'],
            id="sweep-experiment-wide",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.sigma" = []\n',
            ['sweep.grid."train.sigma": empty list; give at least one value'],
            id="sweep-empty-list",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.sigma" = 0.5\n',
            ['sweep.grid."train.sigma": expected a list of values, got 0.5', "brackets"],
            id="sweep-not-a-list",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.sigma" = [0.25, -1.0]\n',
            ['sweep.grid."train.sigma": must be > 0.0 (got -1.0)'],
            id="sweep-bad-value",
        ),
        pytest.param(
            MINIMAL + '[[sweep.zip]]\n"train.sigma" = [0.25, 0.5]\n"certify.n" = [10]\n',
            ['sweep.zip[1]: lists of different lengths ("train.sigma" has 2, "certify.n" has 1)', "same length"],
            id="zip-lengths",
        ),
        pytest.param(
            MINIMAL + '[[sweep.zip]]\n"train.sigma" = [0.25]\n[[sweep.zip]]\n"train.sigma" = [0.5]\n',
            ['sweep.zip[2]."train.sigma": already swept at sweep.zip[1]."train.sigma"'],
            id="swept-twice",
        ),
        pytest.param(
            MINIMAL + '[[sweep.zip]]\n"certify.n" = [1]\n"certify.n0" = ["x"]\n',
            ['sweep.zip[1]."certify.n0": expected an integer, got the string "x"'],
            id="zip-bad-value",
        ),
        pytest.param(
            MINIMAL + '[sweep.zip]\n"train.sigma" = [0.5]\n',
            ["sweep.zip: must be an array of tables", "[[sweep.zip]]"],
            id="zip-not-array",
        ),
        pytest.param(
            MINIMAL + '[sweep.gird]\n"train.sigma" = [0.5]\n',
            ['sweep.gird: unknown key (did you mean "grid"?)'],
            id="sweep-unknown-table",
        ),
        pytest.param(
            MINIMAL + "[sweep]\n",
            ["sweep: is empty; add a [sweep.grid] table or [[sweep.zip]] tables of lists, or remove it"],
            id="sweep-empty",
        ),
        pytest.param(
            MINIMAL + "[sweep.grid]\n",
            ['sweep.grid: is empty; add lists of values, e.g. "train.sigma" = [0.25, 0.5], or remove it'],
            id="grid-empty",
        ),
        pytest.param(
            MINIMAL + "[[sweep.zip]]\n",
            ['sweep.zip[1]: is empty; add lists of values, e.g. "train.sigma" = [0.25, 0.5], or remove it'],
            id="zip-empty",
        ),
        pytest.param(
            MINIMAL + "[sweep]\nzip = []\n",
            ["sweep.zip: is an empty array; add [[sweep.zip]] tables of lists, or remove it"],
            id="zip-empty-array",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.sigma" = [0.25, 0.5, 0.250]\n',
            ['sweep.grid."train.sigma": items 1 and 3 are the same value (0.25); give each value once'],
            id="grid-repeat-spelled-differently",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.sigma" = [1, 1.0]\n',
            ['sweep.grid."train.sigma": items 1 and 2 are the same value (1 and 1.0); give each value once'],
            id="grid-repeat-int-and-float",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.method" = ["gaussian", "smoothmix", "gaussian"]\n',
            ['sweep.grid."train.method": items 1 and 3 are the same value (the string "gaussian")'],
            id="grid-repeat-string",
        ),
        pytest.param(
            MINIMAL + '[sweep.grid]\n"train.amp" = [true, 1]\n',
            ['sweep.grid."train.amp": expected true or false, got 1'],
            id="grid-true-is-not-1",
        ),
        pytest.param(
            MINIMAL + '[[sweep.zip]]\n"train.sigma" = [0.5, 0.5]\n',
            ['sweep.zip[1]."train.sigma": items 1 and 2 are the same value (0.5); give each value once'],
            id="zip-repeat",
        ),
        pytest.param(
            MINIMAL + '[[sweep.zip]]\n"train.sigma" = [0.25, 0.5, 0.25]\n"certify.n" = [10, 20, 10.0]\n',
            ['sweep.zip[1]: items 1 and 3 are the same in every list ("train.sigma" = 0.25, "certify.n" = 10 and '
             '10.0); make them differ in at least one list or remove one'],
            id="zip-repeated-row",
        ),
        pytest.param(
            MINIMAL + '[train.macer]\nlbd = 3.0\n[[variant]]\nname = "g"\n[[variant]]\nname = "s"\n'
                      'train.method = "smoothmix"\n',
            ["train.macer: sets macer's parameters, but the configs train gaussian and smoothmix; "
             'set train.method = "macer" (in [train], a variant or the sweep) or remove this table'],
            id="base-method-table-no-config-trains",
        ),
    ],
)
def test_each_mistake_gets_a_message_with_its_key_path_and_fix(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = error_of(tmp_path, text)
    assert "\n" not in message, message
    for fragment in expected:
        assert fragment in message, message


def test_a_misspelt_required_key_is_named_before_the_key_it_leaves_missing(tmp_path: Path) -> None:
    lines = error_of(tmp_path, MINIMAL.replace("sigma = 0.5", "sigam = 0.5")).splitlines()
    assert lines[1].strip().startswith('train.sigam: unknown key (did you mean "sigma"?)')
    assert lines[2].strip().startswith("train.sigma: required but missing")


def test_several_problems_are_listed_under_one_line_naming_the_file(tmp_path: Path) -> None:
    text = MINIMAL.replace("sigma = 0.5", "sigma = -1.0\nepochs = 0") + "[certify]\nn = 0\n"
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, text))
    first, *problems = str(caught.value).splitlines()
    assert first.endswith("spec.toml: 3 problems")
    assert problems == [
        "  train.sigma: must be > 0.0 (got -1.0); change it to a value > 0.0",
        "  train.epochs: must be >= 1 (got 0); change it to a value >= 1",
        "  certify.n: must be >= 1 (got 0); change it to a value >= 1",
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="nope.toml: no such file; check the path"):
        load_spec(tmp_path / "nope.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory; give the path of a .toml spec file"):
        load_spec(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated: file permissions do not bind root, which runs these tests in some environments.
    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, MINIMAL)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(SpecError, match=r"cannot read the file \(Permission denied\); check that you may read it"):
        load_spec(path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.replace('"tiny"', '"tiny"\ndescription = "caf\xe9"').encode("latin-1"))
    with pytest.raises(SpecError, match="line 4: not UTF-8 text; save the file as UTF-8"):
        load_spec(path)


def test_spec_error_is_a_user_error() -> None:
    assert issubclass(SpecError, UserError)


def test_spec_and_plan_do_not_import_torch() -> None:
    code = "import smx.spec, smx.plan, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---- the executor: [executor] in a spec and in the user config ----


def executor_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str) -> tuple[str, str]:
    """The messages for the same [executor.slurm] lines in a spec and in the user config, each naming its file."""
    monkeypatch.delenv("SMX_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    in_spec = error_of(tmp_path, MINIMAL + f"[executor.slurm]\n{table}\n")
    config = write(tmp_path, f"[executor.slurm]\n{table}\n", "config.toml")
    monkeypatch.setenv("SMX_CONFIG", str(config))
    with pytest.raises(SpecError) as caught:
        smx.spec.executor_settings(parse_spec(MINIMAL, tmp_path / "plain.toml"))
    in_config = str(caught.value)
    assert in_config.startswith(f"{config}: "), in_config
    return in_spec, in_config


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param("gpus_per_job = true", ["executor.slurm.gpus_per_job: expected an integer, got true; "
                                             "write an integer instead"], id="bool-gpus"),
        pytest.param("cpus_per_job = false", ["executor.slurm.cpus_per_job: expected an integer, got false"],
                     id="bool-cpus"),
        pytest.param("time_min = true", ["executor.slurm.time_min: expected an integer, got true"], id="bool-time"),
        pytest.param("mem_gb = true", ["executor.slurm.mem_gb: expected a number, got true"], id="bool-mem"),
        pytest.param("partition = true", ["executor.slurm.partition: expected a string, got true"],
                     id="bool-partition"),
        pytest.param('gpus_per_job = "1"', ['executor.slurm.gpus_per_job: expected an integer, got the string "1"',
                                            "remove the quotes"], id="quoted-gpus"),
        pytest.param('partition = ""', ["executor.slurm.partition: empty; name a partition (`sinfo -s` lists them), "
                                        "or remove the key for the cluster's default partition"], id="empty-partition"),
        pytest.param('partition = "  "', ["executor.slurm.partition: empty; name a partition"], id="blank-partition"),
        pytest.param('partition = "gpu --exclusive"', [
            "executor.slurm.partition: 'gpu --exclusive' holds a space, which no partition name does",
            "sbatch = { exclusive = true }"], id="partition-with-options"),
        pytest.param("sbatch = { account = true }", [
            "executor.slurm.sbatch.account: expected a string or an integer, got true; write --account's value "
            "(true is only for options that take no value: contiguous, exclusive,"], id="bool-sbatch-value"),
        pytest.param("sbatch = { exclusive = false }", [
            "executor.slurm.sbatch.exclusive: false is not written as a flag; remove exclusive from sbatch to leave "
            "--exclusive off"], id="false-flag"),
        pytest.param("sbatch = { x = 1.5 }", [
            'executor.slurm.sbatch.x: expected a string or an integer, got 1.5; write it as a string ("1.5")'],
            id="float-sbatch-value"),
        pytest.param("sbatch = { x = [1] }", ["executor.slurm.sbatch.x: expected a string or an integer, got an "
                                              "array"], id="array-sbatch-value"),
        pytest.param('sbatch = { account = "" }', [
            "executor.slurm.sbatch.account: empty; write --account's value, or remove account from sbatch"],
            id="empty-sbatch-value"),
        pytest.param('sbatch = { comment = "a\\nb" }', [
            "executor.slurm.sbatch.comment: holds a line break or another control character, which would break the "
            "batch script; write the value on one line"], id="line-break-sbatch-value"),
        pytest.param('sbatch = { "mail type" = "END" }', [
            'executor.slurm.sbatch."mail type": not an sbatch option name; write sbatch\'s long option name without '
            "the dashes"], id="bad-option-name"),
        pytest.param('sbatch = { partition = "cpu" }', [
            "executor.slurm.sbatch.partition: smx sets --partition from executor.slurm.partition, which this would "
            'silently replace; set executor.slurm.partition = "<partition>" instead and remove partition from sbatch'],
            id="sbatch-partition"),
        pytest.param("sbatch = { time = 5 }", [
            "executor.slurm.sbatch.time: smx sets --time from executor.slurm.time_min",
            "set executor.slurm.time_min = <minutes> instead and remove time from sbatch"], id="sbatch-time"),
        pytest.param("sbatch = { cpus-per-task = 2 }", [
            "executor.slurm.sbatch.cpus-per-task: smx sets --cpus-per-task from executor.slurm.cpus_per_job",
            "set executor.slurm.cpus_per_job = <CPUs> instead"], id="sbatch-cpus-per-task"),
        pytest.param("sbatch = { cpus_per_task = 2 }", [
            "executor.slurm.sbatch.cpus_per_task: smx sets --cpus-per-task from executor.slurm.cpus_per_job"],
            id="sbatch-cpus_per_task"),
        pytest.param("sbatch = { gpus-per-node = 2 }", [
            "executor.slurm.sbatch.gpus-per-node: smx sets --gpus-per-node from executor.slurm.gpus_per_job",
            "set executor.slurm.gpus_per_job = <GPUs> instead"], id="sbatch-gpus-per-node"),
        pytest.param("sbatch = { gpus = 2 }", ["executor.slurm.sbatch.gpus: smx sets --gpus from "
                                               "executor.slurm.gpus_per_job"], id="sbatch-gpus"),
        pytest.param('sbatch = { mem = "8G" }', [
            "executor.slurm.sbatch.mem: smx sets --mem from executor.slurm.mem_gb",
            "set executor.slurm.mem_gb = <GB> instead"], id="sbatch-mem"),
        pytest.param("sbatch = { time_min = 60 }", [
            "executor.slurm.sbatch.time_min: a key of [executor.slurm] itself, not an sbatch option; move it out of "
            "sbatch: executor.slurm.time_min = <minutes>"], id="sbatch-misplaced-typed-key"),
        pytest.param('sbatch = { dependency = "afterok:1" }', [
            "executor.slurm.sbatch.dependency: smx sets --dependency itself (each job waits for its parents' Slurm "
            "jobs with afterok); remove dependency from sbatch"], id="sbatch-dependency"),
        pytest.param('sbatch = { dep = "afterok:1" }', [
            "executor.slurm.sbatch.dep: sbatch would read --dep as an abbreviation of --dependency, which smx sets; "
            "write the full name of the sbatch option you mean, or remove dep from sbatch"], id="sbatch-abbreviation"),
        pytest.param('sbatch = { par = "x" }', [
            "executor.slurm.sbatch.par: sbatch would read --par as an abbreviation of --parsable or --partition"],
            id="sbatch-ambiguous-abbreviation"),
        pytest.param('sbatch = { job-name = "mine" }', [
            "executor.slurm.sbatch.job-name: smx sets --job-name itself", "remove job-name from sbatch"],
            id="sbatch-job-name"),
        pytest.param('sbatch = { job_name = "mine" }', ["executor.slurm.sbatch.job_name: smx sets --job-name itself"],
                     id="sbatch-job_name"),
        pytest.param('sbatch = { output = "/tmp/x" }', [
            "executor.slurm.sbatch.output: smx sets --output itself (submitit keeps each job's output in "
            "$SMX_STORE_FILES/slurm/<id>/"], id="sbatch-output"),
        pytest.param('sbatch = { error = "/tmp/x" }', ["executor.slurm.sbatch.error: smx sets --error itself"],
                     id="sbatch-error"),
        pytest.param('sbatch = { signal = "USR1@60" }', ["executor.slurm.sbatch.signal: smx sets --signal itself"],
                     id="sbatch-signal"),
        pytest.param("sbatch = { ntasks = 2 }", ["executor.slurm.sbatch.ntasks: smx sets --ntasks itself (each smx "
                                                 "job runs as one task on one node)"], id="sbatch-ntasks"),
        pytest.param('sbatch = { array = "0-3" }', ["executor.slurm.sbatch.array: smx sets --array itself"],
                     id="sbatch-array"),
    ],
)
def test_each_executor_mistake_names_its_file_key_path_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, expected: list[str]
) -> None:
    for message in executor_error(tmp_path, monkeypatch, table):
        assert "\n" not in message, message
        for fragment in expected:
            assert fragment in message, message


def test_every_executor_problem_is_listed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, in_config = executor_error(tmp_path, monkeypatch, 'gpus_per_job = true\nsbatch = { partition = "cpu", '
                                                         'dependency = "afterok:1", account = "lab" }')
    first, *problems = in_config.splitlines()
    assert first.endswith("config.toml: 3 problems")
    assert [problem.split(":")[0].strip() for problem in problems] == [
        "executor.slurm.sbatch.partition", "executor.slurm.sbatch.dependency", "executor.slurm.gpus_per_job"]


def test_smx_validate_names_the_file_with_the_executor_mistake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_fuzz_cli import run_cli

    monkeypatch.delenv("SMX_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    spec = write(tmp_path, MINIMAL + '[executor.slurm]\nsbatch = { time = 5 }\n')
    code, _, stderr = run_cli("validate", str(spec))
    assert code == 2 and f"{spec}: executor.slurm.sbatch.time: smx sets --time" in " ".join(stderr.split())
    assert "Traceback" not in stderr
    config = write(tmp_path, "[executor.slurm]\ngpus_per_job = true\n", "config.toml")
    monkeypatch.setenv("SMX_CONFIG", str(config))
    code, _, stderr = run_cli("validate", str(write(tmp_path, MINIMAL, "plain.toml")))
    assert code == 2 and f"{config}: executor.slurm.gpus_per_job: expected an integer, got true" in \
        " ".join(stderr.split())
    assert "Traceback" not in stderr


def test_sbatch_takes_strings_integers_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMX_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    sbatch = ('{ account = "lab", qos = "normal", mail-type = "END,FAIL", nice = 10, exclusive = true, '
              'requeue = true, mem-per-cpu = "2G", gres = "gpu:1" }')
    text = MINIMAL + f'[executor]\nkind = "slurm"\n[executor.slurm]\npartition = "gpu"\nmem_gb = 32\n' \
                     f"sbatch = {sbatch}\n"
    spec = load_spec(write(tmp_path, text))
    settings = smx.spec.executor_settings(spec).slurm
    assert settings.mem_gb == 32.0 and settings.partition == "gpu"
    assert settings.sbatch == {"account": "lab", "qos": "normal", "mail-type": "END,FAIL", "nice": 10,
                               "exclusive": True, "requeue": True, "mem-per-cpu": "2G", "gres": "gpu:1"}
    # The executor is no part of a job key.
    assert [job.key for job in build_plan(spec).jobs] == [job.key for job in build_plan(parse_spec(MINIMAL)).jobs]


def test_slurm_section_refuses_sbatch_options_smx_sets_even_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="dependency: smx sets --dependency itself"):
        smx.spec.SlurmSection(sbatch={"dependency": "afterok:1"})
    with pytest.raises(ValueError, match="gpus_per_job\n  Input should be a valid integer"):
        smx.spec.SlurmSection.model_validate({"gpus_per_job": True})


def test_every_typed_slurm_key_has_an_example_for_messages() -> None:
    assert set(smx.spec.TYPED_EXAMPLES) == set(smx.spec.SlurmSection.model_fields) - {"sbatch"}
    assert set(smx.spec.SBATCH_TYPED.values()) <= set(smx.spec.TYPED_EXAMPLES)


def test_every_sbatch_option_smx_writes_is_refused_in_the_sbatch_table(tmp_path: Path) -> None:
    """The batch script submitit writes for smx's jobs: each option in it but the user's own is one smx sets, so
    that [executor.slurm] sbatch may not set it (scheduler/slurm.py may add options: this keeps the lists true)."""
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    from smx.scheduler.slurm import _sbatch_parameters

    settings = smx.spec.SlurmSection(partition="gpu", gpus_per_job=2, mem_gb=8, sbatch={"account": "lab",
                                                                                         "exclusive": True})
    refused = set(smx.spec.SBATCH_TYPED) | set(smx.spec.SBATCH_SET_BY_SMX)
    overridable = {"wckey"}  # submitit's accounting key "submitit": a cluster may want its own
    for kind in ("train", "aggregate"):
        parameters = _sbatch_parameters(settings, kind, "train/base", ["12", "13"])
        script = _make_sbatch_string(command="true", folder=tmp_path / "%j", **parameters)
        options = [line.split()[1][2:].partition("=")[0] for line in script.splitlines()
                   if line.startswith("#SBATCH --")]
        assert "account" in options and "exclusive" in options and "dependency" in options
        assert len(options) == len(set(options)), script  # no option written twice
        for option in options:
            name = option.replace("-", "_")
            if option not in ("account", "exclusive"):
                assert name in refused | overridable, f"--{option} is set by smx but allowed in sbatch"


# ---- robustness: any text either loads or gets a SpecError ----

VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(repr),  # TOML spells inf and nan as Python does
    st.text(st.characters(codec="utf-8"), max_size=8).map(json.dumps),
    st.booleans().map(lambda flag: "true" if flag else "false"),
    st.sampled_from([
        "[]", "[1, 2]", "[0.5, -1]", '["a"]', "{}", "{ eta = 1 }", "{ x = [1, 2] }", "1979-05-27", "07:32:00",
        "1979-05-27T07:32:00Z", '"gaussian"', '"smoothmix"', '"mnist"', '"cifar10"', '"lenet"', '"resnet50"',
        "0", "-0.0", "1e300", "[[1], [2]]", "[{ a = 1 }]",
    ]),
)
KEYS = st.one_of(
    st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
    st.sampled_from([
        "sigma", "eta", "name", "train.sigma", "train.method", "train.smoothmix.eta", '"train.sigma"', "variant",
        "sweep.grid", 'sweep.grid."train.sigma"', "sweep.zip", "report.radii", "experiment.seed", "model.arch",
        "data.root", "certify.n",
    ]),
)
SNIPPETS = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=6),
    st.sampled_from(["[", "]", "[[", "]]", "=", '"', "\n", "[variant]\n", "[[variant]]\n", "[sweep.grid]\n",
                     "[[sweep.zip]]\n", "[train.smoothmix]\n", "[report]\n", ".", "#"]),
)


def mutate(text: str, data: st.DataObject) -> str:
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["delete", "insert", "value", "extra_key"]), label="kind")
        lines = text.split("\n")
        if kind == "delete" and text:
            start = data.draw(st.integers(0, len(text) - 1))
            text = text[:start] + text[start + data.draw(st.integers(1, 12)):]
        elif kind == "insert":
            position = data.draw(st.integers(0, len(text)))
            text = text[:position] + data.draw(SNIPPETS) + text[position:]
        elif kind == "value":
            assignments = [index for index, line in enumerate(lines) if " = " in line]
            if assignments:
                index = data.draw(st.sampled_from(assignments))
                key = lines[index].split(" = ")[0]
                lines[index] = f"{key} = {data.draw(VALUES)}"
            text = "\n".join(lines)
        else:
            index = data.draw(st.integers(0, len(lines)))
            lines.insert(index, f"{data.draw(KEYS)} = {data.draw(VALUES)}")
            text = "\n".join(lines)
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), original=st.sampled_from([QUICKSTART.read_text(), ABLATION.read_text(), SWEEP_SPEC]))
def test_mutated_specs_load_or_raise_spec_error(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, original: str
) -> None:
    path = tmp_path_factory.mktemp("mutated") / "spec.toml"
    path.write_text(mutate(original, data), encoding="utf-8")
    try:
        spec = load_spec(path)
    except SpecError as error:
        assert str(error).startswith(f"{path}: ")
        return
    build_plan(spec)


def test_the_readme_spec_reference_is_a_valid_spec(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    reference = readme[readme.index("## Spec reference"):]
    example = reference[reference.index("```toml") + len("```toml"):]
    spec = parse_spec(example[:example.index("```")], tmp_path / "readme.toml")
    assert spec.configs and spec.executor["slurm"] == {}


def test_the_readme_executor_examples_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    # The user config of "Running on a cluster".
    cluster = readme[readme.index("## Running on a cluster"):]
    cluster = cluster[cluster.index("```toml") + len("```toml"):]
    config = write(tmp_path, cluster[:cluster.index("```")], "config.toml")
    monkeypatch.setenv("SMX_CONFIG", str(config))
    settings = smx.spec.executor_settings(parse_spec(MINIMAL, tmp_path / "plain.toml"))
    assert settings.kind == "slurm" and settings.slurm.sbatch == {"account": "mylab", "qos": "normal"}
    # The spec reference's commented-out [executor] lines, uncommented.
    reference = readme[readme.index("## Spec reference"):]
    table = reference[reference.index("\n[executor]"):reference.index("\n[sweep.grid]")]
    lines = [re.sub(r"\s+#.*", "", line.removeprefix("# ")) for line in table.splitlines()]
    uncommented = "\n".join(part for line in lines for part in re.split(r", (?=\w+ = )", line))
    assert "sbatch = " in uncommented and "partition = " in uncommented, uncommented
    monkeypatch.setenv("SMX_CONFIG", str(write(tmp_path, "", "empty.toml")))
    spec = parse_spec(MINIMAL + uncommented, tmp_path / "reference.toml")
    assert smx.spec.executor_settings(spec).slurm.sbatch == {"account": "lab"}
