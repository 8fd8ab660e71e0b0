"""The store's schema version and the upgrade of an older store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from smx.db.models import SCHEMA_VERSION
from smx.db.store import StoreError, open_store, resolve_location, stored_version


def test_an_older_store_is_upgraded_when_a_reading_command_opens_it(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE analysis_results"))
        connection.execute(text("DROP INDEX ix_certificates_curve"))
        connection.execute(text("ALTER TABLE jobs DROP COLUMN slurm_job_id"))
        connection.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    reopened = open_store(str(tmp_path / "store"), create=False)
    assert stored_version(reopened) == SCHEMA_VERSION
    assert inspect(reopened.engine).has_table("analysis_results")
    assert "ix_certificates_curve" in {index["name"] for index in inspect(reopened.engine).get_indexes("certificates")}
    assert "slurm_job_id" in {column["name"] for column in inspect(reopened.engine).get_columns("jobs")}


def test_a_newer_store_is_refused(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE meta SET value = :version WHERE key = 'schema_version'"),
                           {"version": str(SCHEMA_VERSION + 1)})
    with pytest.raises(StoreError, match="newer than this smx"):
        open_store(str(tmp_path / "store"), create=False)


def test_store_urls_smx_cannot_use_are_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SMX_STORE_FILES", str(tmp_path / "files"))
    with pytest.raises(StoreError, match="postgresql\\+psycopg://user:password@host/database"):
        open_store("mysql://user@host/db")
    assert resolve_location("postgres://u:p@db.example/smx")[0] == "postgresql+psycopg://u:p@db.example/smx"
    assert resolve_location("postgresql://u:p@db.example/smx") == ("postgresql+psycopg://u:p@db.example/smx",
                                                                   tmp_path / "files")
