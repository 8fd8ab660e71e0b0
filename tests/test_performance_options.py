"""The opt-in speed options (bf16 certification, AMP training, torch.compile) and the device-dependent choices
that must leave results alone (forward batch, model preparation)."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from smx.errors import UserError
from smx.science import smoothing
from smx.science.data import load_dataset
from smx.science.methods.params import SmoothMixParams
from smx.science.models import build_model
from smx.science.smoothing import (
    ABSTAIN,
    CPU_FORWARD_BATCH,
    certify_dataset,
    forward_batch_size,
    prepare_for_certification,
    rows_that_fit,
)
from smx.science.training import TrainSettings, load_checkpoint, save_checkpoint, train
from smx.tasks.certify import compile_failure_explained
from smx.tasks.flags import environment_count, environment_flag
from tests.conftest import REPO


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return build_model("lenet", "mnist-mini").eval()


@pytest.fixture(scope="module")
def test_images():
    data = load_dataset("mnist-mini", "test")
    return data.images[:3], data.labels[:3]


def certificates(model, images, labels, batch_size=100, **options):
    torch.manual_seed(0)
    found = certify_dataset(model, images, labels, range(len(images)), 0.5, 20, 200, 0.01, batch_size, 10, **options)
    return [(c.prediction, c.radius, c.pa_lower, c.count) for c in found]


def test_default_precision_is_fp32_and_explicit_fp32_changes_nothing(lenet, test_images):
    assert certificates(lenet, *test_images) == certificates(lenet, *test_images, precision="fp32")


def test_bf16_is_an_opt_in_that_runs_on_a_cpu(lenet, test_images):
    answers = certificates(lenet, *test_images, precision="bf16")
    assert len(answers) == 3
    for prediction, radius, pa_lower, count in answers:
        assert 0 <= count <= 200 and 0.0 <= pa_lower <= 1.0
        assert (prediction == ABSTAIN and radius == 0.0) or (0 <= prediction < 10 and radius >= 0.0)


def test_an_unknown_precision_is_rejected(lenet, test_images):
    with pytest.raises(ValueError, match="precision"):
        certificates(lenet, *test_images, precision="fp16")


def test_prepared_model_computes_the_same_function(lenet):
    prepared = prepare_for_certification(copy.deepcopy(lenet), "cpu")
    inputs = torch.rand(64, 1, 28, 28)
    with torch.inference_mode():
        expected, found = lenet(inputs), prepared(inputs)
    assert not prepared.training
    convolutions = [layer for layer in prepared.modules() if isinstance(layer, torch.nn.Conv2d)]
    assert all(layer.weight.is_contiguous(memory_format=torch.channels_last) for layer in convolutions)
    assert all(layer.inplace for layer in prepared.modules() if isinstance(layer, torch.nn.ReLU))
    assert torch.allclose(found, expected, atol=1e-5)
    assert torch.equal(found.argmax(dim=1), expected.argmax(dim=1))


def test_forward_batch_never_exceeds_the_configured_batch_size(lenet):
    assert forward_batch_size(lenet, (1, 28, 28), 1000, "cpu") == CPU_FORWARD_BATCH
    assert forward_batch_size(lenet, (1, 28, 28), 50, "cpu") == 50
    assert forward_batch_size(lenet, (1, 28, 28), None, "cpu") == CPU_FORWARD_BATCH


def test_a_certify_job_takes_its_batch_size_from_its_runtime_or_from_a_config_planned_before_that() -> None:
    from smx.db.models import Job
    from smx.tasks.certify import configured_batch_size

    certify = {"sigma": 0.5, "n0": 100, "n": 1000, "alpha": 0.001, "max_samples": None, "skip": 1, "split": "test"}
    data = {"data_root": None, "download": False}
    assert configured_batch_size(Job(config={"certify": certify}, runtime={**data, "certify_batch_size": 64})) == 64
    assert configured_batch_size(Job(config={"certify": certify}, runtime={**data, "certify_batch_size": None})) is None
    assert configured_batch_size(Job(config={"certify": {**certify, "batch_size": 400}}, runtime=data)) == 400


def test_rows_that_fit_a_share_of_free_gpu_memory():
    free = 8 * 2**30
    assert rows_that_fit(free, bytes_per_row=2**20, batch_size=1000) == 1000
    assert rows_that_fit(free, bytes_per_row=2**24, batch_size=1000) == int(smoothing.GPU_MEMORY_SHARE * 512)
    assert rows_that_fit(free, bytes_per_row=2**40, batch_size=1000) == 1


def amp_settings(**changes):
    values = dict(method="smoothmix", params=SmoothMixParams(steps=1, noise_samples=2, eta=1.0, warmup=2), sigma=0.5,
                  epochs=1, batch_size=16, lr=0.05, lr_step=2, lr_gamma=0.1, momentum=0.9, weight_decay=1e-4,
                  seed=3, dataset="mnist-mini")
    values.update(changes)
    return TrainSettings(**values)


def test_amp_training_is_opt_in_recorded_and_runs_on_a_cpu(tmp_path):
    assert amp_settings().amp is False
    data = load_dataset("mnist-mini", "train").subset(range(32))
    torch.manual_seed(0)
    metrics = []
    final = train(build_model("lenet", "mnist-mini"), data, amp_settings(amp=True), tmp_path, on_epoch=metrics.append)
    assert load_checkpoint(final)["settings"]["amp"] is True
    assert torch.isfinite(torch.tensor(metrics[0].loss))


class Interrupted(Exception):
    pass


def interrupt(path, epoch):
    raise Interrupted


def test_a_checkpoint_from_before_amp_existed_resumes_as_fp32(tmp_path):
    data = load_dataset("mnist-mini", "train").subset(range(32))
    with pytest.raises(Interrupted):
        train(build_model("lenet", "mnist-mini"), data, amp_settings(epochs=2), tmp_path, on_checkpoint=interrupt)
    [first] = tmp_path.glob("epoch-*.pt")
    state = load_checkpoint(first)
    del state["settings"]["amp"]
    save_checkpoint(state, first)

    with pytest.raises(UserError, match="amp"):
        train(build_model("lenet", "mnist-mini"), data, amp_settings(epochs=2, amp=True), tmp_path)
    assert train(build_model("lenet", "mnist-mini"), data, amp_settings(epochs=2), tmp_path).name == "epoch-0002.pt"


def test_a_job_process_imports_neither_torchvision_nor_scipy_stats() -> None:
    # Each job is a process of its own, and those imports cost it 2-3 s more on a 2-core machine: in-memory data,
    # LeNet and CERTIFY's bound and radius need neither.
    probe = textwrap.dedent("""
        import sys
        from smx.tasks.run import TASKS
        for module in TASKS.values():
            __import__(module)
        from smx.science.data import load_dataset
        from smx.science.models import build_model
        from smx.science.smoothing import certified_radius, lower_confidence_bound
        load_dataset("mnist-mini", "test")
        build_model("lenet", "mnist-mini")
        certified_radius(lower_confidence_bound(990, 1000, 0.001), 0.5)
        print(" ".join(sorted(name for name in ("torchvision", "scipy.stats", "torch._dynamo") if name in sys.modules)))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


@pytest.mark.parametrize("value, on", [(None, False), ("", False), ("0", False), ("false", False), ("No", False),
                                       ("OFF", False), ("1", True), ("true", True), ("Yes", True), (" on ", True)])
def test_smx_compile_takes_the_usual_spellings_of_on_and_off(monkeypatch, value, on) -> None:
    if value is None:
        monkeypatch.delenv("SMX_COMPILE", raising=False)
    else:
        monkeypatch.setenv("SMX_COMPILE", value)
    assert environment_flag("SMX_COMPILE") is on


@pytest.mark.parametrize("value", ["2", "maybe", "ture"])
def test_any_other_smx_compile_is_a_user_error_naming_it(monkeypatch, value) -> None:
    monkeypatch.setenv("SMX_COMPILE", value)
    with pytest.raises(UserError, match=f"SMX_COMPILE='{value}' is neither on nor off. Fix: set SMX_COMPILE to one of"):
        environment_flag("SMX_COMPILE")


@pytest.mark.parametrize("value, count", [(None, None), ("", None), (" 20000 ", 20000), ("1", 1)])
def test_smx_certify_batch_size_is_a_positive_count_or_unset(monkeypatch, value, count) -> None:
    if value is None:
        monkeypatch.delenv("SMX_CERTIFY_BATCH_SIZE", raising=False)
    else:
        monkeypatch.setenv("SMX_CERTIFY_BATCH_SIZE", value)
    assert environment_count("SMX_CERTIFY_BATCH_SIZE") == count


@pytest.mark.parametrize("value", ["0", "-5", "2e4", "lots"])
def test_any_other_smx_certify_batch_size_is_a_user_error_naming_it(monkeypatch, value) -> None:
    monkeypatch.setenv("SMX_CERTIFY_BATCH_SIZE", value)
    with pytest.raises(UserError, match=f"SMX_CERTIFY_BATCH_SIZE='{value}' is not a positive whole number. Fix: set"):
        environment_count("SMX_CERTIFY_BATCH_SIZE")


@pytest.mark.parametrize(("name", "value"), [("SMX_CERTIFY_BATCH_SIZE", "abc"), ("SMX_COMPILE", "maybe"),
                                             ("SMX_CUDA_GRAPHS", "2")])
def test_submit_and_worker_refuse_a_malformed_job_setting_before_anything_runs(monkeypatch, tmp_path, name,
                                                                              value) -> None:
    from tests.test_fuzz_cli import run_cli

    spec = tmp_path / "spec.toml"
    spec.write_text((REPO / "experiments" / "quickstart.toml").read_text())
    monkeypatch.setenv(name, value)
    store = tmp_path / "store"
    for command in (["submit", str(spec)], ["worker"]):
        code, _, err = run_cli(*command, "--store", str(store), "--gpus", "none")
        assert code == 2 and f"{name}='{value}' is" in err and "Fix: set" in err, (command, err)
    assert not store.exists()  # nothing queued, nothing run


def test_compiling_without_a_cxx_compiler_is_one_user_error_with_the_fix(tmp_path) -> None:
    # torch.compile compiles at the first forward pass: a process with no compiler on its PATH, $CXX pointing
    # nowhere and an empty Inductor cache (a cached kernel would need no compiler) fails there. About 15 s.
    probe = textwrap.dedent("""
        import torch
        from smx.errors import UserError
        from smx.science.models import build_model
        from smx.science.smoothing import certify_dataset, prepare_for_certification
        from smx.tasks.certify import compile_failure_explained
        model = prepare_for_certification(build_model("lenet", "mnist-mini"), "cpu", compile_model=True)
        try:
            with compile_failure_explained(True):
                certify_dataset(model, torch.zeros(1, 1, 28, 28), [0], [0], 0.5, 2, 4, 0.001, 8, 10)
        except UserError as error:
            print(error)
    """)
    environment = {"PATH": str(tmp_path), "CXX": "/nonexistent", "SMX_COMPILE": "yes",
                   "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env=environment)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("SMX_COMPILE=yes: torch.compile needs a C++ compiler (g++, or the one $CXX names)")
    assert "/nonexistent" in message and message.endswith("Fix: install one, or unset SMX_COMPILE")


def test_a_compiled_model_s_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ValueError, match="unrelated"):
        with compile_failure_explained(True):
            raise ValueError("unrelated")
