"""Opt-ins a worker's environment switches on for its jobs (SMX_COMPILE, ...). Torch-free."""

from __future__ import annotations

import os

from smx.errors import UserError

TRUE_SPELLINGS = ("1", "true", "yes", "on")
FALSE_SPELLINGS = ("", "0", "false", "no", "off")


def environment_flag(name: str) -> bool:
    """Whether the environment variable `name` is on: unset or a false spelling is off (case-insensitive).

    Any other value is a UserError rather than off, so that a misspelt opt-in does not go silently unused.
    """
    value = os.environ.get(name, "")
    spelling = value.strip().lower()
    if spelling in TRUE_SPELLINGS:
        return True
    if spelling in FALSE_SPELLINGS:
        return False
    raise UserError(f"{name}={value!r} is neither on nor off. Fix: set {name} to one of {', '.join(TRUE_SPELLINGS)} "
                    f"to switch it on, or to one of {', '.join(FALSE_SPELLINGS[1:])} (or unset it) to leave it off")


def environment_count(name: str) -> int | None:
    """The positive whole number the environment variable `name` holds; None when it is unset or empty.

    Anything else is a UserError, so that a mistyped setting fails the job instead of being ignored.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise UserError(f"{name}={value!r} is not a positive whole number. Fix: set {name} to one, such as 20000, or "
                    "unset it")


# What a worker's environment may set for its jobs, by kind of value.
JOB_FLAGS = ("SMX_COMPILE", "SMX_CUDA_GRAPHS")
JOB_COUNTS = ("SMX_CERTIFY_BATCH_SIZE",)


def check_job_environment() -> None:
    """Raise the UserError a job would fail with on a malformed setting above, before any job is queued or run."""
    for name in JOB_FLAGS:
        environment_flag(name)
    for name in JOB_COUNTS:
        environment_count(name)
