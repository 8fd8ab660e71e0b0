"""Where a store is: --store / SMX_STORE turned into a database URL and the directory of the store's files.

Apart from smx/db/store.py so that a directory store's location is checked without importing SQLAlchemy: `smx tui`
refuses a location that can never hold a store before it draws its first frame, which must not wait for SQLAlchemy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from smx.errors import UserError
from smx.paths import expand_home

DEFAULT_STORE = "store"
SERVER_URL_FORM = "postgresql://user:password@host:port/database"


class StoreError(UserError):
    pass


class NoStoreYet(StoreError):
    """Nothing at the location has smx's tables: `smx submit` would create the store there."""


def resolve_location(location: str | None) -> tuple[str, Path]:
    """Turn --store / SMX_STORE into (database URL, files root)."""
    if location is not None and not location.strip():
        # `--store "$STORE"` with STORE unset would quietly use (or create) ./store.
        raise StoreError("--store is empty (an unset shell variable?).\nFix: give a store directory or PostgreSQL "
                         "URL, or leave --store out to use $SMX_STORE or ./store.")
    location = location or os.environ.get("SMX_STORE") or DEFAULT_STORE
    if re.match(r"sqlite(\+\w+)?:", location, re.IGNORECASE):
        raise StoreError(_sqlite_url_error(location))
    if "://" in location:
        _check_url(location)
        # PostgreSQL's own URL forms mean psycopg (version 3) to smx, the driver it installs.
        for scheme in ("postgresql://", "postgres://"):
            if location.startswith(scheme):
                location = "postgresql+psycopg://" + location.removeprefix(scheme)
        return location, Path(os.environ.get("SMX_STORE_FILES", DEFAULT_STORE)).resolve()
    root = expand_home(location, "--store / SMX_STORE").resolve()
    return f"sqlite:///{root / 'smx.db'}", root


def uncreatable_error(location: str | None) -> StoreError | None:
    """Why a store could not be created at `location`, as far as can be seen without creating it (what `smx submit
    --dry-run` says beforehand); None where nothing stands in the way."""
    url, root = resolve_location(location)
    existing = next(path for path in (root, *root.parents) if path.exists())
    if not existing.is_dir():
        reason = f"{existing} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"this user may not write in {existing}"
    else:
        return None
    where = "--store or SMX_STORE" if url.startswith("sqlite") else "SMX_STORE_FILES"
    return StoreError(f"cannot create the store directory {root}: {reason}.\nFix: choose a writable location with "
                      f"{where}.")


def _sqlite_url_error(url: str) -> str:
    """smx keeps an SQLite store as a directory, with smx.db beside the checkpoints and logs: a URL would part them."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        database = None
    # Resolved as SQLite would: a relative path (sqlite:///path, three slashes) from the current directory.
    directory = "DIR" if not database else Path(database).resolve().parent if database.endswith(".db") \
        else Path(database).resolve()
    return (f"--store / SMX_STORE {url!r} is an SQLite URL, but smx keeps an SQLite store as a directory: smx.db with "
            f"its checkpoints and logs beside it.\nFix: pass that directory, as in --store {directory}.")


def check_location(location: str | None) -> tuple[str, Path]:
    """resolve_location, refusing a location that can never hold a store: a directory store's path that is a file."""
    url, root = resolve_location(location)
    if url.startswith("sqlite") and root.is_file():
        raise StoreError(f"{root} is a file; a store is the directory that holds smx.db and its checkpoints.\n"
                         f"Fix: pass the directory, --store {root.parent if root.name == 'smx.db' else '<dir>'}.")
    return url, root


def _check_url(url: str) -> None:
    # Imported here: only a server store's URL needs SQLAlchemy's parser, the one its engine will use.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        problem = "it is not a database URL"
    except ValueError:  # SQLAlchemy met a port that is no number, which is also what an unclosed [ of IPv6 leaves
        problem = "smx cannot read a host and a port number in it"
    else:
        return
    # The URL cannot be parsed, so its password is hidden by hand: whatever lies between user: and @.
    shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    raise StoreError(f"the store URL {shown!r} is malformed: {problem}.\n"
                     f"Fix: write it as {SERVER_URL_FORM}, the port a number such as 5432 (or left out) and an "
                     "IPv6 host in brackets, as in postgresql://user:password@[::1]:5432/database.")
