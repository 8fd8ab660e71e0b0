"""Paths a user writes, in a spec, an option or an environment variable; and files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from smx.errors import UserError

# A partial file of written_whole untouched for this long is a killed writer's (SIGKILL skips its clean-up): every
# file written so is written in seconds.
LEFTOVER_PARTIAL_SECONDS = 3600


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


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A hidden path beside `path` to write the file at; renamed to `path` when the block ends without an error, and
    removed otherwise, so that an error or a kill midway never leaves a partial file under the real name.

    The name is one no other writer has, even one with this pid on another machine sharing the file system. Partial
    files of `path` that killed writers left are removed.
    """
    _remove_leftover_partials(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        with contextlib.suppress(OSError):  # nothing left once renamed, or nothing ever written
            partial.unlink()


def _remove_leftover_partials(path: Path) -> None:
    partial_of_path = re.compile(rf"\.{re.escape(path.name)}\.\d+\.[0-9a-f]{{8}}\.part")  # as written_whole names them
    stale_before = time.time() - LEFTOVER_PARTIAL_SECONDS
    try:
        siblings = list(path.parent.iterdir())
    except OSError:  # a folder not made yet
        return
    for sibling in siblings:
        if partial_of_path.fullmatch(sibling.name):
            with contextlib.suppress(OSError):  # another writer removed it first
                if sibling.stat().st_mtime < stale_before:
                    sibling.unlink()
