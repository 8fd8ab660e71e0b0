"""Training methods: one module each, with one entry point of the same signature.

Each method module `smx.science.methods.<name>` defines

    def loss(model, inputs, targets, sigma, context: StepContext) -> StepOutput

for one optimizer step on one chunk of a loader batch. Its hyperparameters are a pydantic model in
`smx.science.methods.params` (torch-free, so specs validate without importing torch).
Modules are imported on first use so that listing methods does not import torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from smx.science.methods.params import METHOD_PARAMS


def method_names() -> list[str]:
    return sorted(METHOD_PARAMS)


def load_method(name: str) -> ModuleType:
    if name not in METHOD_PARAMS:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(method_names())}")
    return importlib.import_module(f"smx.science.methods.{name}")
