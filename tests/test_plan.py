"""The job graph: order, parents, sharing, and content keys that change exactly when results would."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import smx.plan
from smx.plan import CODE_VERSION, Plan, build_plan, content_key
from smx.science.metrics import DEFAULT_RADII
from smx.spec import SpecError, executor_settings, parse_spec, spec_hash
from tests.test_fuzz_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_TEXT = (REPO / "experiments" / "quickstart.toml").read_text()
ABLATION = REPO / "experiments" / "mnist_ablation_eta.toml"


def plan_of(text: str) -> Plan:
    return build_plan(parse_spec(text, REPO / "experiments" / "spec.toml"))


def keys_by_name(plan: Plan) -> dict[str, str]:
    return {job.name: job.key for job in plan.jobs}


def test_quickstart_plan_is_train_then_certify_then_aggregate() -> None:
    plan = plan_of(QUICKSTART_TEXT)
    assert [job.name for job in plan.jobs] == [
        "train/gaussian", "train/smoothmix", "certify/gaussian", "certify/smoothmix", "aggregate/quickstart",
    ]
    train_gaussian, train_smoothmix, certify_gaussian, certify_smoothmix, aggregate = plan.jobs
    assert [job.kind for job in plan.jobs] == ["train", "train", "certify", "certify", "aggregate"]
    assert train_gaussian.parents == [] and train_smoothmix.parents == []
    assert certify_gaussian.parents == [train_gaussian.key]
    assert certify_smoothmix.parents == [train_smoothmix.key]
    assert aggregate.parents == sorted([certify_gaussian.key, certify_smoothmix.key])
    assert [job.config_name for job in plan.jobs] == ["gaussian", "smoothmix", "gaussian", "smoothmix", None]
    assert plan.experiment == "quickstart"
    assert plan.description == "Gaussian vs SmoothMix on embedded MNIST digits, sigma = 0.5"
    assert plan.spec_text == QUICKSTART_TEXT
    assert plan.spec_hash == spec_hash(parse_spec(QUICKSTART_TEXT))
    assert [config.name for config in plan.configs] == ["gaussian", "smoothmix"]


def test_job_inputs_follow_the_architecture() -> None:
    plan = plan_of(QUICKSTART_TEXT)
    config = plan.configs[1].config
    train, certify, aggregate = plan.jobs[1], plan.jobs[3], plan.jobs[4]
    assert train.inputs == {key: config[key] for key in ("seed", "data", "model", "train")}
    assert certify.inputs == {"certify": config["certify"], "data": config["data"]}
    assert train.key == content_key("train", train.inputs, [])
    assert certify.key == content_key("certify", certify.inputs, [train.key])
    assert aggregate.inputs == {
        "experiment": "quickstart",
        "radii": list(DEFAULT_RADII),
        "configs": [
            {"name": "gaussian", "certify_key": plan.jobs[2].key, "method": "gaussian", "sigma": 0.5, "swept": {}},
            {"name": "smoothmix", "certify_key": certify.key, "method": "smoothmix", "sigma": 0.5, "swept": {}},
        ],
    }
    assert aggregate.key == content_key("aggregate", aggregate.inputs, aggregate.parents)


def test_runtime_settings_travel_beside_the_keys_not_in_them() -> None:
    with_root = (QUICKSTART_TEXT.replace('"mnist-mini"', '"mnist-mini"\nroot = "/data"\ndownload = true')
                 .replace("[certify]\n", "[certify]\nbatch_size = 4096\n"))
    plain, rooted = plan_of(QUICKSTART_TEXT), plan_of(with_root)
    assert keys_by_name(plain) == keys_by_name(rooted)
    assert rooted.jobs[0].runtime == {"data_root": "/data", "download": True}
    # Only a certify job reads the rows of a certification pass.
    assert rooted.jobs[2].runtime == {"data_root": "/data", "download": True, "certify_batch_size": 4096}
    assert plain.jobs[2].runtime == {"data_root": None, "download": False, "certify_batch_size": None}
    assert rooted.jobs[-1].runtime == {}
    assert all("root" not in job.inputs.get("data", {}) for job in rooted.jobs)


SLURM_EXECUTOR = """
[executor]
kind = "slurm"

[executor.slurm]
partition = "gpu"
gpus_per_job = 2
sbatch = { account = "lab", qos = "high" }
"""


def test_the_executor_changes_no_job_key() -> None:
    with_executor = QUICKSTART_TEXT.replace("[[variant]]", SLURM_EXECUTOR + "\n[[variant]]", 1)
    assert keys_by_name(plan_of(with_executor)) == keys_by_name(plan_of(QUICKSTART_TEXT))


def test_executor_settings_merge_the_user_config_the_spec_and_the_command_line(tmp_path: Path, monkeypatch) -> None:
    user_config = tmp_path / "config.toml"
    user_config.write_text('[executor]\nkind = "slurm"\n[executor.slurm]\npartition = "cpu"\ncpus_per_job = 8\n'
                           'time_min = 60\n')
    monkeypatch.setenv("SMX_CONFIG", str(user_config))
    spec = parse_spec(QUICKSTART_TEXT.replace("[[variant]]", SLURM_EXECUTOR + "\n[[variant]]", 1), tmp_path / "s.toml")
    settings = executor_settings(spec)
    assert settings.kind == "slurm"
    assert (settings.slurm.partition, settings.slurm.gpus_per_job, settings.slurm.cpus_per_job) == ("gpu", 2, 8)
    assert settings.slurm.time_min == 60 and settings.slurm.sbatch == {"account": "lab", "qos": "high"}
    assert executor_settings(spec, "local").kind == "local"
    assert executor_settings(parse_spec(QUICKSTART_TEXT, tmp_path / "q.toml")).slurm.partition == "cpu"
    user_config.write_text('[executor.slurm]\ngpu = 1\n')
    with pytest.raises(SpecError, match=f"{user_config}: executor.slurm.gpu: unknown key"):
        executor_settings(spec)
    # validate checks the user config too
    code, _, stderr = run_cli("validate", str(REPO / "experiments" / "quickstart.toml"))
    assert code == 2 and f"{user_config}: executor.slurm.gpu: unknown key" in " ".join(stderr.split())
    monkeypatch.setenv("SMX_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SpecError, match="SMX_CONFIG names .*missing.toml, which is not a file"):
        executor_settings(spec)
    code, _, stderr = run_cli("validate", str(REPO / "experiments" / "quickstart.toml"))
    assert code == 2 and "which is not a file" in stderr


def test_changing_one_configs_certify_n_rekeys_only_its_certify_job_and_the_aggregate() -> None:
    edited = QUICKSTART_TEXT.replace('name = "smoothmix"\n', 'name = "smoothmix"\ncertify.n = 2000\n')
    before, after = keys_by_name(plan_of(QUICKSTART_TEXT)), keys_by_name(plan_of(edited))
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"certify/smoothmix", "aggregate/quickstart"}


def test_changing_a_training_setting_rekeys_the_whole_chain_of_that_config() -> None:
    edited = QUICKSTART_TEXT.replace("eta = 5.0", "eta = 6.0")
    before, after = keys_by_name(plan_of(QUICKSTART_TEXT)), keys_by_name(plan_of(edited))
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"train/smoothmix", "certify/smoothmix", "aggregate/quickstart"}


def test_later_settings_rekey_only_where_chosen_and_their_defaults_change_no_key() -> None:
    before = keys_by_name(plan_of(QUICKSTART_TEXT))
    defaults = QUICKSTART_TEXT.replace("[train]\n", '[train]\namp = false\nlr_decay = "one_epoch_late"\n').replace(
        "[certify]\n", '[certify]\nprecision = "fp32"\n')
    assert keys_by_name(plan_of(defaults)) == before
    # The default decay is the reference's; "on_time" is what every job ran before the setting existed, so a
    # config that asks for it is keyed without the setting, as those jobs were.
    assert [config.config["train"]["lr_decay"] for config in plan_of(QUICKSTART_TEXT).configs] == [
        "one_epoch_late", "one_epoch_late"]
    on_time = plan_of(QUICKSTART_TEXT.replace('name = "smoothmix"\n',
                                              'name = "smoothmix"\ntrain.lr_decay = "on_time"\n'))
    assert {name for name, key in keys_by_name(on_time).items() if before[name] != key} == {
        "train/smoothmix", "certify/smoothmix", "aggregate/quickstart"}
    assert [config.config["train"].get("lr_decay") for config in on_time.configs] == ["one_epoch_late", None]
    amp_text = QUICKSTART_TEXT.replace('name = "smoothmix"\n', 'name = "smoothmix"\ntrain.amp = true\n')
    amp = keys_by_name(plan_of(amp_text))
    assert {name for name in before if before[name] != amp[name]} == {
        "train/smoothmix", "certify/smoothmix", "aggregate/quickstart"}
    bf16 = QUICKSTART_TEXT.replace('name = "smoothmix"\n', 'name = "smoothmix"\ncertify.precision = "bf16"\n')
    plan = plan_of(bf16)
    assert {name for name, key in keys_by_name(plan).items() if before[name] != key} == {
        "certify/smoothmix", "aggregate/quickstart"}
    assert [config.config["certify"].get("precision") for config in plan.configs] == [None, "bf16"]


def test_opt_ins_can_be_swept_with_their_defaults_and_the_default_config_keeps_its_keys() -> None:
    gaussian = QUICKSTART_TEXT.split("[[variant]]")[0]
    swept = plan_of(gaussian + '[sweep.grid]\n"certify.precision" = ["fp32", "bf16"]\n"train.amp" = [false, true]\n'
                    '"train.lr_decay" = ["on_time", "one_epoch_late"]\n')
    assert len(swept.configs) == 8 and len([job for job in swept.jobs if job.kind == "train"]) == 4
    (default,) = [config for config in swept.configs
                  if config.swept == {"certify.precision": "fp32", "train.amp": False,
                                      "train.lr_decay": "one_epoch_late"}]
    assert default.config == plan_of(gaussian).configs[0].config


def test_description_changes_no_key_but_the_experiment_name_changes_the_aggregate() -> None:
    plan = keys_by_name(plan_of(QUICKSTART_TEXT))
    described = keys_by_name(plan_of(QUICKSTART_TEXT.replace("Gaussian vs SmoothMix", "Two methods")))
    assert described == plan
    renamed = keys_by_name(plan_of(QUICKSTART_TEXT.replace('name = "quickstart"', 'name = "other"')))
    assert {name: key for name, key in renamed.items() if not name.startswith("aggregate/")} == {
        name: key for name, key in plan.items() if not name.startswith("aggregate/")
    }
    assert renamed["aggregate/other"] != plan["aggregate/quickstart"]


def test_report_radii_change_only_the_aggregate() -> None:
    before = keys_by_name(plan_of(QUICKSTART_TEXT))
    after = keys_by_name(plan_of(QUICKSTART_TEXT + "\n[report]\nradii = [0.0, 0.5, 1.0]\n"))
    assert {name for name in before if before[name] != after[name]} == {"aggregate/quickstart"}


def test_configs_that_differ_only_in_certification_share_one_train_job() -> None:
    plan = plan_of(QUICKSTART_TEXT + '\n[sweep.grid]\n"certify.n" = [1000, 2000]\n')
    assert [job.name for job in plan.jobs] == [
        "train/gaussian-n=1000",
        "train/smoothmix-n=1000",
        "certify/gaussian-n=1000",
        "certify/gaussian-n=2000",
        "certify/smoothmix-n=1000",
        "certify/smoothmix-n=2000",
        "aggregate/quickstart",
    ]
    train_gaussian, train_smoothmix = plan.jobs[0].key, plan.jobs[1].key
    assert [job.parents for job in plan.jobs[2:6]] == [[train_gaussian]] * 2 + [[train_smoothmix]] * 2
    swept_per_config = [entry["swept"] for entry in plan.jobs[-1].inputs["configs"]]
    assert swept_per_config == [{"certify.n": n} for n in (1000, 2000, 1000, 2000)]
    assert [job.swept for job in plan.jobs] == [{"certify.n": n} for n in (1000, 1000, 1000, 2000, 1000, 2000)] + [{}]


REFORMATTED_QUICKSTART = textwrap.dedent("""
    # Same experiment: other key order, other spacing, comments, inline tables and integer spellings.
    [[variant]]
    train = { method = "gaussian" }
    name = "gaussian"

    [[variant]]
    name = "smoothmix"
    [variant.train]
    method = "smoothmix"    # the method under test
    [variant.train.smoothmix]
    noise_samples = 2
    steps = 4
    alpha = 1
    eta = 5

    [certify]
    max_samples = 200
    alpha = 0.001
    n = 1_000
    n0 = 100

    [train]
    lr = 0.01
    batch_size = 256
    epochs = 10
    sigma = 0.5

    [model]
    arch = 'lenet'

    [data]
    dataset = "mnist-mini"

    [experiment]
    seed = 0
    description = "Gaussian vs SmoothMix on embedded MNIST digits, sigma = 0.5"
    name = "quickstart"
""")


def test_keys_ignore_key_order_formatting_comments_and_number_spelling() -> None:
    assert keys_by_name(plan_of(REFORMATTED_QUICKSTART)) == keys_by_name(plan_of(QUICKSTART_TEXT))


def test_spec_hash_ignores_key_order_formatting_and_comments() -> None:
    reordered = QUICKSTART_TEXT.replace("epochs = 10\nbatch_size = 256", "batch_size = 256   # per step\nepochs = 10")
    assert reordered != QUICKSTART_TEXT
    assert plan_of(reordered).spec_hash == plan_of(QUICKSTART_TEXT).spec_hash
    edited = QUICKSTART_TEXT.replace("epochs = 10", "epochs = 11")
    assert plan_of(edited).spec_hash != plan_of(QUICKSTART_TEXT).spec_hash


def test_integer_and_float_spellings_give_the_same_keys() -> None:
    integer = keys_by_name(plan_of(QUICKSTART_TEXT.replace("eta = 5.0", "eta = 1")))
    floating = keys_by_name(plan_of(QUICKSTART_TEXT.replace("eta = 5.0", "eta = 1.0")))
    assert integer == floating


def test_content_key_is_independent_of_dict_and_parent_order_and_normalises_negative_zero() -> None:
    inputs = {"b": [1, 2], "a": {"y": 0.1, "x": 1.0}}
    reordered = {"a": {"x": 1.0, "y": 0.1}, "b": [1, 2]}
    assert content_key("certify", inputs, ["p2", "p1"]) == content_key("certify", reordered, ["p1", "p2"])
    assert content_key("train", {"w": -0.0}, []) == content_key("train", {"w": 0.0}, [])
    assert content_key("train", {"w": 1}, []) != content_key("train", {"w": 1.5}, [])
    assert content_key("train", inputs, []) != content_key("certify", inputs, [])


def test_code_version_is_part_of_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = keys_by_name(plan_of(QUICKSTART_TEXT))
    monkeypatch.setattr(smx.plan, "CODE_VERSION", CODE_VERSION + 1)
    after = keys_by_name(plan_of(QUICKSTART_TEXT))
    assert all(before[name] != after[name] for name in before)


def test_ablation_plan_has_one_chain_per_config() -> None:
    plan = build_plan(parse_spec(ABLATION.read_text(), ABLATION))
    kinds = [job.kind for job in plan.jobs]
    assert kinds == ["train"] * 6 + ["certify"] * 6 + ["aggregate"]
    assert len({job.key for job in plan.jobs}) == len(plan.jobs)
    aggregate = plan.jobs[-1]
    assert [entry["name"] for entry in aggregate.inputs["configs"]] == sorted(config.name for config in plan.configs)
    assert aggregate.parents == sorted(job.key for job in plan.jobs if job.kind == "certify")
