"""Paths a user writes, in a spec, an option or an environment variable."""

from __future__ import annotations

from pathlib import Path

from smx.errors import UserError


def expand_home(path: str | Path, setting: str) -> Path:
    """`path` with a leading `~` or `~name` replaced by that home directory.

    A `~name` for a user this machine does not know is the user's mistake, reported against `setting`
    (the option, variable or spec key the path came from) instead of as pathlib's RuntimeError.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError:
        home = str(path).split("/", 1)[0]
        raise UserError(
            f"{setting}: cannot find the home directory {home!r} in {str(path)!r}: there is no such user here. "
            "Fix: write the path in full, or with ~ for your own home."
        ) from None
