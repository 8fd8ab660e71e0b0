from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def store(tmp_path: Path):
    from smx.db.store import open_store

    return open_store(str(tmp_path / "store"))


def smx_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "smx", *arguments]
