"""`smx query` runs on a connection that refuses every kind of write."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pytest
from sqlalchemy import func, select

from smx.db.models import Job
from smx.db.readonly import QueryError, run_query, tables_sql


@pytest.fixture
def seeded(store):
    with store.session() as session:
        session.add(Job(key="abc123", kind="train", name="train/x", config={"seed": 0}))
    return store


def test_select_works(seeded) -> None:
    result = run_query(seeded, "SELECT key, kind FROM jobs")
    assert result.columns == ["key", "kind"]
    assert result.rows == [("abc123", "train")]
    assert run_query(seeded, "SELECT count(*) FROM results").rows == [(0,)]


@pytest.mark.parametrize("sql", [
    "INSERT INTO jobs (key, kind, name, config) VALUES ('x', 'train', 'x', '{}')",
    "UPDATE jobs SET status = 'done'",
    "DELETE FROM jobs",
    "DROP TABLE jobs",
    "DROP VIEW results",
    "CREATE TABLE evil (x)",
    "ATTACH DATABASE '/tmp/evil.db' AS evil",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA foreign_keys = OFF",
    "SELECT 1; DELETE FROM jobs",
    "WITH gone AS (DELETE FROM jobs RETURNING *) SELECT * FROM gone",
    "VACUUM",
    "UPDATE sqlite_master SET name = 'x'",
    "PRAGMA writable_schema = ON",
])
def test_writes_are_refused(seeded, sql: str) -> None:
    with pytest.raises(QueryError):
        run_query(seeded, sql)
    with seeded.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.get(Job, "abc123").status == "pending"


def test_bad_sql_names_the_problem(seeded) -> None:
    # Each database names it its own way: SQLite "no such table: nope", PostgreSQL 'relation "nope" does not exist'.
    with pytest.raises(QueryError, match='no such table: nope|relation "nope" does not exist'):
        run_query(seeded, "SELECT * FROM nope")


def test_tables_lists_every_table_and_view_with_its_columns(seeded) -> None:
    listed = {name: (kind, columns) for name, kind, columns in run_query(seeded, tables_sql(seeded)).rows}
    assert listed["jobs"][0] == "table" and "key" in listed["jobs"][1].split(", ")
    assert listed["results"][0] == "view" and "acr" in listed["results"][1].split(", ")


@pytest.mark.parametrize("sql", [";", " ;  ; ", "-- only a comment"])
def test_a_query_without_a_statement_is_an_empty_query(seeded, sql: str) -> None:
    with pytest.raises(QueryError, match=r"^empty query: .*\nFix: pass a SELECT statement"):
        run_query(seeded, sql)


def test_placeholders_are_refused_with_the_fix_of_writing_the_value(seeded) -> None:
    # ? and :name are SQLite's placeholders; PostgreSQL's $1 reaches the server, while ? and :name are syntax errors.
    for sql in ["SELECT ?", "SELECT :experiment"] if seeded.is_sqlite else ["SELECT $1"]:
        with pytest.raises(QueryError) as raised:
            run_query(seeded, sql)
        assert raised.value.message == (
            "query parameters (?, :name, $1) are not supported: smx query runs the statement as written.\n"
            f"  query: {sql}\nFix: write the value into the SQL, e.g. WHERE experiment = 'quickstart'.")
    assert run_query(seeded, "SELECT key FROM jobs WHERE kind = :kind", {"kind": "train"}).rows == [("abc123",)]


ENDLESS = "WITH RECURSIVE counter(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM counter) SELECT count(*) FROM counter"


@pytest.fixture
def ctrl_c_during_the_statement(monkeypatch):
    """Send this process SIGINT once the query's handler is in place, and never after the query."""
    from smx.db import readonly

    watched = readonly._interrupted_by_sigint

    @contextlib.contextmanager
    def interrupted_soon(connection):
        with watched(connection):
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                yield
            finally:
                timer.cancel()
                timer.join()

    monkeypatch.setattr(readonly, "_interrupted_by_sigint", interrupted_soon)


def test_ctrl_c_stops_a_statement_that_never_ends(seeded, ctrl_c_during_the_statement) -> None:
    if seeded.sqlite_path is None:
        pytest.skip("psycopg's own waits are interruptible; SQLite's statements run without returning to Python")
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_query(seeded, ENDLESS)
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back
    assert run_query(seeded, "SELECT count(*) FROM jobs").rows == [(1,)]


def test_smx_query_stopped_by_ctrl_c_exits_130_and_says_so(seeded, ctrl_c_during_the_statement) -> None:
    if seeded.sqlite_path is None:
        pytest.skip("SQLite only, as above")
    from typer.testing import CliRunner

    from smx.cli import app

    result = CliRunner().invoke(app, ["query", ENDLESS, "--store", seeded.location])
    assert result.exit_code == 130, result.output
    assert "interrupted: the query was stopped" in result.output


def test_a_query_whose_sigint_is_ignored_leaves_it_ignored(seeded) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert run_query(seeded, "SELECT count(*) FROM jobs").rows == [(1,)]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
