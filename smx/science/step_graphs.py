"""Optimizer steps replayed from one CUDA graph: one launch per step instead of hundreds.

A SmoothMix step on LeNet's batches is a few hundred small kernels (an attack of T forward and backward passes,
the loss, the optimizer), each too short to keep a GPU busy, so an eager step waits on Python and kernel
launches (docs/performance.md, "On an H100"). A CUDA graph records the kernels of one step once and replays
them with a single launch. What a replay may not do, the training steps avoid: host syncs (no `.item()`, no
boolean indexing), new shapes (the smaller last batch runs eagerly) and new Python numbers (the graph bakes in
the learning rate and every warm-up weight, so a graph serves one epoch).

`GraphedSteps` keeps the steps and their order: the same computation as the eager loop, launched differently,
with noise from the same generator. The recorder is the one part that needs CUDA; tests drive `GraphedSteps`
with one that calls the step again at every replay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import torch

# Capture must follow eager steps that initialise what a capture cannot: cuDNN's autotuning, the optimizer's
# momentum buffers, lazily loaded kernels and library handles. PyTorch's own examples warm up for three.
WARMUP_STEPS = 3

Step = Callable[[torch.Tensor, torch.Tensor], None]


class Recorder(Protocol):
    def side_stream(self) -> AbstractContextManager[None]: ...

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        """Record `step` without running it; returns what replays it."""
        ...


class CudaGraphRecorder:
    """Warm-up and capture on one side stream, as capture requires; replays on the current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            yield
        main.wait_stream(self.stream)

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            step()
        return graph.replay


class GraphedSteps:
    """Runs `step(inputs, targets)` for one epoch: WARMUP_STEPS eager steps on the recorder's side stream, then one
    capture, then a replay for every step of the captured shape; steps of another shape run eagerly. A capture
    that fails is reported as a warning and the epoch goes on eagerly: a capture runs no kernel and draws no
    random number, so nothing of the model, the optimizer or the generator has moved.

    The step must report through tensors that outlive it, updated in place (the epoch's sums), and create them in
    its first call, which is eager: a replay returns nothing and repeats every captured kernel, an allocation's
    fill included, on the inputs copied into the graph's own buffers.
    """

    def __init__(self, step: Step, recorder: Recorder) -> None:
        self.step = step
        self.recorder = recorder
        self.eager_steps = 0
        self.shape: torch.Size | None = None
        self.static_inputs: torch.Tensor | None = None
        self.static_targets: torch.Tensor | None = None
        self.replay: Callable[[], None] | None = None
        self.capture_failed = False

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.shape is None:
            self.shape = inputs.shape
        if inputs.shape != self.shape or self.capture_failed:
            self.step(inputs, targets)
        elif self.eager_steps < WARMUP_STEPS:
            with self.recorder.side_stream():
                self.step(inputs, targets)
            self.eager_steps += 1
        elif self.replay is None:
            self.static_inputs, self.static_targets = inputs.clone(), targets.clone()
            static_inputs, static_targets = self.static_inputs, self.static_targets
            try:
                self.replay = self.recorder.capture(lambda: self.step(static_inputs, static_targets))
            except RuntimeError as error:
                warnings.warn(f"CUDA graph capture of a training step failed, so this epoch runs eagerly: {error}",
                              RuntimeWarning, stacklevel=2)
                self.capture_failed = True
                self.step(inputs, targets)
                return
            self.replay()
        else:
            self.static_inputs.copy_(inputs)
            self.static_targets.copy_(targets)
            self.replay()
