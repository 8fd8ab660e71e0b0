"""The database and cluster servers some tests run against, and what to do when one is not there.

On a developer's machine a test that needs a server skips with the reason; with SMX_REQUIRE_SERVERS=1 (CI, after
scripts/ci_services.sh) it fails instead, so a server that did not start cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

POSTGRES_URL = os.environ.get("SMX_TEST_POSTGRES_URL", "postgresql+psycopg://smx:smx@127.0.0.1:5432/smx_test")
REQUIRED = os.environ.get("SMX_REQUIRE_SERVERS") == "1"
START_HINT = "start one with `sudo scripts/ci_services.sh`"


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (SMX_REQUIRE_SERVERS=1)")
    pytest.skip(f"{reason}: {START_HINT}")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards."""
    try:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import OperationalError

        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        name = f"smx_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except (ImportError, OperationalError) as error:
        unavailable(f"no PostgreSQL server at {POSTGRES_URL}: {str(error).splitlines()[0]}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: Engine, name: str) -> None:
    """Drop a test database, waiting out an autovacuum worker that may be in it.

    FORCE ends the other sessions in the database, but ending an autovacuum worker needs pg_signal_backend, which
    scripts/ci_services.sh grants and a developer's server may not: there the worker is waited for, as it only
    lives for seconds.
    """
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    deadline = time.monotonic() + 30
    while True:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as error:
            if "pg_signal_backend" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def require_slurm() -> None:
    """Skip (or fail, in CI) unless a Slurm controller answers and the submitit package is installed."""
    if shutil.which("sinfo") is None:
        unavailable("no Slurm commands (sinfo) on this machine")
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        unavailable("the Slurm controller did not answer sinfo within 20 s")
    states = answer.stdout.split()
    if answer.returncode != 0 or not any(state.startswith(("idle", "mix", "alloc", "comp")) for state in states):
        unavailable(f"no usable Slurm node (sinfo: {answer.stdout.strip() or answer.stderr.strip()})")
    try:
        import submitit  # noqa: F401
    except ImportError:
        unavailable("the submitit package is not installed (pip install -e '.[cluster]')")
