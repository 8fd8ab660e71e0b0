from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path: Path, monkeypatch):
    """A new store's --store value: an SQLite directory, or a fresh PostgreSQL database whose files (checkpoints,
    logs, locks) go to a per-test SMX_STORE_FILES, which subprocesses inherit."""
    if request.param == "sqlite":
        yield str(tmp_path / "store")
        return
    from tests.servers import fresh_postgres_database

    monkeypatch.setenv("SMX_STORE_FILES", str(tmp_path / "store"))
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def store(store_location: str):
    from smx.db.store import open_store

    opened = open_store(store_location)
    yield opened
    opened.engine.dispose()


def smx_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "smx", *arguments]
