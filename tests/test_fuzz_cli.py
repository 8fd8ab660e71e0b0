"""Whatever a user feeds the command line, the answer is a clear error and exit code 2, never a traceback.

tests/test_spec.py fuzzes `load_spec` itself; here the same malformed specs, and hostile SQL, go through
`smx.cli.main` as the console script runs it, including how it prints errors and chooses its exit code.
"""

from __future__ import annotations

import io
import sqlite3
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smx.db.models import Job
from smx.db.store import open_store
from tests.test_spec import ABLATION, QUICKSTART, SWEEP_SPEC, mutate



def fuzz(examples: int) -> settings:
    # Derandomized: the same examples on every run, so CI is repeatable; few of them, so it stays fast.
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def run_cli(*arguments: str) -> tuple[int, str, str]:
    """Run the `smx` command in this process, as its console script does: (exit code, stdout, stderr).

    An exception other than SystemExit escapes, as it would reach the user as a traceback.
    """
    from smx.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["smx", *arguments]), redirect_stdout(out), redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_clear_error(result: tuple[int, str, str], path: Path) -> None:
    code, out, err = result
    assert code == 2, (out, err)
    assert err.startswith("error: ") and str(path) in err and "Traceback" not in out + err, err


@fuzz(50)
@given(data=st.data(), original=st.sampled_from([QUICKSTART.read_text(), ABLATION.read_text(), SWEEP_SPEC]),
       command=st.sampled_from([["validate"], ["submit", "--dry-run"]]))
def test_a_mutated_spec_is_accepted_or_refused_clearly(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, original: str, command: list[str]
) -> None:
    folder = tmp_path_factory.mktemp("mutated")
    path = folder / "spec.toml"
    path.write_text(mutate(original, data), encoding="utf-8")
    store_option = ["--store", str(folder / "store")] if command[0] == "submit" else []
    result = run_cli(*command, str(path), *store_option)
    if result[0] != 0:
        assert_clear_error(result, path)
    assert not (folder / "store").exists()  # a dry run writes nothing


@fuzz(30)
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_other_file_is_refused_clearly(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("garbage") / "spec.toml"
    path.write_bytes(content)
    assert_clear_error(run_cli("validate", str(path)), path)


SQL_WORDS = st.sampled_from([
    "SELECT", "INSERT INTO", "UPDATE", "DELETE FROM", "DROP TABLE", "DROP VIEW", "CREATE TABLE", "ALTER TABLE",
    "ATTACH DATABASE", "DETACH", "PRAGMA", "VACUUM", "REINDEX", "REPLACE INTO", "WITH", "RETURNING", "SET", "VALUES",
    "FROM", "WHERE", "AS", "jobs", "results", "meta", "certificates", "status", "key", "*", "1", "'done'",
    "'x.db'", "=", ",", "(", ")", ";", "--", "/*", "*/", "'", '"', "writable_schema", "journal_mode", "user_version",
    "load_extension('x')", "randomblob(9)",
])


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("query") / "store"
    with open_store(str(root)).session() as session:
        session.add(Job(key="abc123", kind="train", name="train/x", config={"seed": 0}))
    return root


def dump(store_root: Path) -> list[str]:
    database = sqlite3.connect(store_root / "smx.db")
    try:
        return list(database.iterdump())
    finally:
        database.close()


@fuzz(40)
@given(words=st.lists(SQL_WORDS, min_size=1, max_size=10))
def test_smx_query_answers_or_refuses_clearly_and_never_writes(small_store: Path, words: list[str]) -> None:
    before = dump(small_store)
    code, out, err = run_cli("query", " ".join(words), "--store", str(small_store), "--format", "csv")
    assert code in (0, 2), (code, out, err)
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in out + err, err
    assert dump(small_store) == before
