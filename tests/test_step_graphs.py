"""Optimizer steps replayed from CUDA graphs (step_graphs), checked on a CPU with a recorder that replays by calling
the step again: the graphed loop must train exactly as the eager one; no method's step may ask the host for a
value, which a capture forbids; and every replay must run the captured step's operators with the same constants,
since a graph replays what it recorded whatever Python would compute now."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from smx.science import step_graphs, training
from smx.science.data import ImageTensors, load_dataset
from smx.science.methods.params import (
    ConsistencyParams,
    GaussianParams,
    MacerParams,
    SmoothAdvParams,
    SmoothMixParams,
    StabilityParams,
)
from smx.science.models import build_model
from smx.science.training import TrainSettings, train

aten = torch.ops.aten
# Operators that make the host wait for a value on the device, or give a shape only the values decide.
HOST_SYNCS = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default, aten.equal.default,
              aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default, aten._unique2.default,
              aten.repeat_interleave.Tensor, aten.histc.default, aten.bincount.default}
# Tensor methods that hand a value to Python: on a CPU some run no operator at all, on CUDA each is a host sync.
HOST_READS = {torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.__bool__,
              torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}


class OperatorLog(TorchDispatchMode):
    """The operators a step runs, each with its arguments that are not tensors (shapes, scalars: what a CUDA graph
    bakes in), and in `found` those in HOST_SYNCS or indexing by a boolean mask, which runs nonzero underneath."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.operators: list[tuple[str, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default) and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        )
        if func in HOST_SYNCS or boolean_index:
            self.found.append(str(func))
        if func.namespace != "profiler":  # the optimizer's profiling marks run no kernel
            leaves, _ = tree_flatten((args, kwargs or {}))
            constants = (repr(tuple(leaf.shape)) if torch.is_tensor(leaf) else repr(leaf) for leaf in leaves)
            self.operators.append((str(func), *constants))
        return func(*args, **(kwargs or {}))


class HostReads(TorchFunctionMode):
    """Records every call of a method in HOST_READS."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.found.append(func.__name__)
        return func(*args, **(kwargs or {}))


class ReplayingRecorder:
    """step_graphs.Recorder for a CPU: a capture records nothing and each replay calls the step again, under an
    OperatorLog. The first replay stands for the step a CUDA capture records: its host syncs are kept, and every
    later replay's operators and constants must be the same as its."""

    def __init__(self) -> None:
        self.captures = self.replays = 0
        self.host_syncs: list[str] = []
        self.replays_unlike_the_capture = 0

    def side_stream(self):
        return nullcontext()

    def capture(self, step):
        self.captures += 1
        captured: list[tuple[str, ...]] = []

        def replay():
            self.replays += 1
            with HostReads() as reads, OperatorLog() as log:
                step()
            if not captured:
                captured.extend(log.operators)
                self.host_syncs += log.found + reads.found
            elif log.operators != captured:
                self.replays_unlike_the_capture += 1

        return replay


SMOOTHMIX = SmoothMixParams(steps=2, noise_samples=2, eta=1.0, warmup=2, mix_step=1)
# (method, its parameters, architecture): every method on LeNet, and BatchNorm layers, which the attacks switch
# to eval mode and back, in a CIFAR ResNet.
CASES = [
    ("gaussian", GaussianParams(noise_samples=2), "lenet"),
    ("stability", StabilityParams(), "lenet"),
    ("smoothadv", SmoothAdvParams(epsilon=0.5, steps=2, noise_samples=2, warmup=2), "lenet"),
    ("macer", MacerParams(noise_samples=2, gamma=50.0), "lenet"),
    ("consistency", ConsistencyParams(noise_samples=2, adversarial=True, steps=2), "lenet"),
    ("smoothmix", SMOOTHMIX, "lenet"),
    ("smoothmix", SMOOTHMIX, "cifar_resnet20"),
]


def tiny_training_set(arch: str) -> tuple[ImageTensors, str]:
    """44 images: in batches of 8, five full batches, then a smaller one whose steps run eagerly."""
    if arch == "lenet":
        return load_dataset("mnist-mini", "train").subset(range(44)), "mnist-mini"
    generator = torch.Generator().manual_seed(0)
    return ImageTensors(torch.rand(44, 3, 32, 32, generator=generator), torch.arange(44) % 10), "cifar10"


@pytest.mark.parametrize(("method", "params", "arch"), CASES, ids=[f"{method}-{arch}" for method, _, arch in CASES])
def test_graphed_epochs_train_exactly_as_eager_ones_without_host_syncs(method, params, arch, tmp_path, monkeypatch):
    data, dataset = tiny_training_set(arch)
    settings = TrainSettings(method=method, params=params, sigma=0.5, epochs=2, batch_size=8, lr=0.05, lr_step=1,
                             lr_gamma=0.1, momentum=0.9, weight_decay=1e-4, seed=5, dataset=dataset)
    full_steps = 5 * params.optimizer_steps_per_batch()

    def trained(folder: str):
        torch.manual_seed(0)
        model = build_model(arch, dataset)
        metrics: list[training.EpochMetrics] = []
        train(model, data, settings, tmp_path / folder, on_epoch=metrics.append)
        return model.state_dict(), [(m.loss, m.noisy_accuracy, m.extras) for m in metrics]

    eager_weights, eager_metrics = trained("eager")
    recorders: list[ReplayingRecorder] = []

    def recording(device: torch.device) -> ReplayingRecorder:
        recorders.append(ReplayingRecorder())
        return recorders[-1]

    monkeypatch.setattr(training, "uses_cuda_graphs", lambda settings, data, device: True)
    monkeypatch.setattr(training, "CudaGraphRecorder", recording)
    graphed_weights, graphed_metrics = trained("graphed")

    assert [(r.captures, r.replays) for r in recorders] == [(1, full_steps - step_graphs.WARMUP_STEPS)] * 2
    assert [sync for r in recorders for sync in r.host_syncs] == []
    assert [r.replays_unlike_the_capture for r in recorders] == [0, 0]
    assert graphed_metrics == eager_metrics
    for name, tensor in eager_weights.items():
        assert torch.equal(graphed_weights[name], tensor), name


class FailingRecorder(ReplayingRecorder):
    def capture(self, step):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_leaves_the_epoch_to_eager_steps(tmp_path, monkeypatch):
    data, dataset = tiny_training_set("lenet")
    settings = TrainSettings(method="smoothmix", params=SMOOTHMIX, sigma=0.5, epochs=1, batch_size=8, lr=0.05,
                             lr_step=1, lr_gamma=0.1, momentum=0.9, weight_decay=1e-4, seed=5, dataset=dataset)
    weights = []
    for graphed in (False, True):
        monkeypatch.setattr(training, "uses_cuda_graphs", lambda settings, data, device: graphed)
        monkeypatch.setattr(training, "CudaGraphRecorder", lambda device: FailingRecorder())
        torch.manual_seed(0)
        model = build_model("lenet", dataset)
        if graphed:
            with pytest.warns(RuntimeWarning, match="capture of a training step failed.*not permitted"):
                train(model, data, settings, tmp_path / "graphed")
        else:
            train(model, data, settings, tmp_path / "eager")
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(weights[1][name], tensor), name


def test_the_checks_find_host_syncs_and_constants_that_change():
    values = torch.tensor([0.5, -1.0, 2.0])
    with HostReads() as reads, OperatorLog() as log:
        values.sum().item()
        values[values > 0].sum()
        values.tolist()
        bool(values[0] > 0)
    assert log.found == ["aten._local_scalar_dense.default", "aten.index.Tensor", "aten._local_scalar_dense.default"]
    assert reads.found == ["item", "tolist", "__bool__"]
    logs = []
    for scale in (0.1, 0.1, 0.01):
        with OperatorLog() as log:
            values.mul(scale)
        logs.append(log.operators)
    assert logs[0] == logs[1] != logs[2]


def test_graphs_are_for_gpus_and_data_on_the_device():
    data = load_dataset("mnist-mini", "train").subset(range(8))
    settings = TrainSettings(method="gaussian", params=GaussianParams(), sigma=0.5, epochs=1, batch_size=8, lr=0.01,
                             lr_step=1, lr_gamma=0.1, momentum=0.9, weight_decay=0.0, seed=0, dataset="mnist-mini",
                             cuda_graphs=True)
    assert not training.uses_cuda_graphs(settings, data, torch.device("cpu"))
    assert training.uses_cuda_graphs(settings, data, torch.device("cuda"))
    assert not training.uses_cuda_graphs(settings, torch.utils.data.TensorDataset(data.images), torch.device("cuda"))
    settings.cuda_graphs = False
    assert not training.uses_cuda_graphs(settings, data, torch.device("cuda"))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@needs_cuda
def test_cuda_graph_replays_take_each_steps_inputs_and_add_to_the_sums():
    device = torch.device("cuda")
    total = torch.zeros((), device=device)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        total.add_((inputs * targets[:, None]).sum())

    run = step_graphs.GraphedSteps(step, step_graphs.CudaGraphRecorder(device))
    calls = [(torch.rand(8, 3), torch.randint(0, 10, (8,))) for _ in range(step_graphs.WARMUP_STEPS + 4)]
    calls.append((torch.rand(5, 3), torch.randint(0, 10, (5,))))  # another shape: eager
    for inputs, targets in calls:
        run(inputs.to(device), targets.to(device))
    expected = sum(float((inputs * targets[:, None]).sum()) for inputs, targets in calls)
    assert run.replay is not None
    assert float(total) == pytest.approx(expected, rel=1e-6)


GPU_CASES = [
    ("smoothmix", SMOOTHMIX, "lenet", False),
    ("macer", MacerParams(noise_samples=4), "lenet", False),
    ("smoothmix", SMOOTHMIX, "cifar_resnet20", False),
    ("smoothmix", SMOOTHMIX, "lenet", True),
]


@needs_cuda
@pytest.mark.parametrize(("method", "params", "arch", "amp"), GPU_CASES,
                         ids=[f"{method}-{arch}{'-amp' if amp else ''}" for method, _, arch, amp in GPU_CASES])
def test_cuda_graphs_train_as_eager_steps_do_on_a_gpu(method, params, arch, amp, tmp_path, monkeypatch):
    if arch == "lenet":
        data, dataset = load_dataset("mnist-mini", "train").subset(range(1000)), "mnist-mini"
    else:
        generator = torch.Generator().manual_seed(0)
        data = ImageTensors(torch.rand(300, 3, 32, 32, generator=generator), torch.arange(300) % 10)
        dataset = "cifar10"
    settings = TrainSettings(method=method, params=params, sigma=0.5, epochs=2, batch_size=64, lr=0.01, lr_step=1,
                             lr_gamma=0.1, momentum=0.9, weight_decay=1e-4, seed=5, dataset=dataset, device="cuda",
                             amp=amp)
    captures = []

    class CountingRecorder(step_graphs.CudaGraphRecorder):
        def capture(self, step):
            captures.append(1)
            return super().capture(step)

    monkeypatch.setattr(training, "CudaGraphRecorder", CountingRecorder)
    runs = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        metrics: list[training.EpochMetrics] = []
        settings.cuda_graphs = graphed
        final = train(build_model(arch, dataset), data, settings, tmp_path / str(graphed), on_epoch=metrics.append)
        runs[graphed] = [m.loss for m in metrics], training.load_checkpoint(final)["rng"]["cuda"]
    assert len(captures) == 2
    # A replay draws from the generator where the eager step would, and moves it as far.
    assert torch.equal(runs[True][1], runs[False][1])
    # cuDNN's own non-determinism, and bf16 rounding under amp: the same training, not the same bits.
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-2 if amp else 1e-3)
