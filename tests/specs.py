"""The small specs end-to-end tests run: LeNet on mnist-mini, one or two epochs, a few certified images."""

from __future__ import annotations


def tiny_spec(name: str, *, epochs: int = 2, n: int = 100, max_samples: int = 4, description: str = "",
              method: str | None = None) -> str:
    """A spec without variants; `method` sets train.method (variants appended by the caller may set it instead)."""
    method_line = f'method = "{method}"\n' if method else ""
    return f"""
[experiment]
name = "{name}"
description = "{description}"
seed = 0

[data]
dataset = "mnist-mini"

[model]
arch = "lenet"

[train]
{method_line}sigma = 0.5
epochs = {epochs}
batch_size = 256
lr = 0.01

[certify]
n0 = 10
n = {n}
alpha = 0.01
batch_size = 250
max_samples = {max_samples}
"""


def variants(*methods: str) -> str:
    """One [[variant]] per method, named after it."""
    return "".join(f'\n[[variant]]\nname = "{method}"\ntrain.method = "{method}"\n' for method in methods)
