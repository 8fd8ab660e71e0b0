"""A store this user cannot write (a read-only copy, mount or share): reading commands work, writing ones refuse
clearly, and nothing in the store changes.

Permissions do not stop root, so as root each command runs without the capabilities that override them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from smx.db.models import SCHEMA_VERSION
from tests.conftest import REPO, smx_command
from tests.test_store import files_in

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drops Linux capabilities as root")

PR_CAPBSET_DROP = 24
# What lets root write where permissions say no: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER.
OVERRIDING_CAPABILITIES = (1, 2, 3)
CERTIFICATION_LOG = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.8\t1\t0:00:01\n1\t2\t-1\t0.0\t0\t0:00:01\n"


def _without_overriding_capabilities() -> None:
    # Run in the child before exec: root's capabilities after exec are its bounding set.
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in OVERRIDING_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_as_user(command: list[str], **options) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Run `command` as an ordinary user would: permissions apply to it, even when the tests run as root."""
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "COLUMNS": "200"},
                          preexec_fn=_without_overriding_capabilities if os.geteuid() == 0 else None, **options)


def smx(*arguments: str) -> subprocess.CompletedProcess:
    return run_as_user(smx_command(*arguments))


def below(folder: Path) -> list[Path]:
    """`folder` and everything in it."""
    return [folder, *folder.rglob("*")]


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Take away every write permission on `paths`, and give it back after."""
    modes = {path: path.stat().st_mode for path in paths}
    for path, mode in modes.items():
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one finished experiment (an imported certification log), cleanly closed: no -shm or -wal."""
    folder = tmp_path_factory.mktemp("finished")
    log = folder / "base.tsv"
    log.write_text(CERTIFICATION_LOG)
    store = folder / "store"
    imported = run_as_user(smx_command("import", str(log), "--name", "finished", "--method", "gaussian",
                                       "--sigma", "0.5", "--dataset", "mnist", "--store", str(store)))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert sorted(path.name for path in store.iterdir() if path.name.startswith("smx.db")) == ["smx.db"]
    return store


@pytest.fixture
def store(finished_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(finished_store, copy)
    with read_only(*below(copy)):
        probe = run_as_user([sys.executable, "-c", f"open({str(copy / 'probe')!r}, 'w')"])
    if probe.returncode == 0:
        (copy / "probe").unlink()
        pytest.skip("this process cannot give up root's power to write anywhere")
    return copy


def assert_refused(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stdout + result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    for text in expected:
        assert text in message, (text, message)
    # The advice for a damaged database would have a user throw a healthy store away.
    assert "damaged" not in message and "move it away" not in message
    return message


def test_reading_commands_work_on_a_read_only_store_and_change_nothing(store: Path, tmp_path: Path) -> None:
    before = files_in(store)
    reader = textwrap.dedent(f"""
        from smx.tui.data import StoreReader
        from smx.tui.model import LoadRequest
        snapshot = StoreReader({str(store)!r}).load(LoadRequest(curves=True))
        print(snapshot.found, snapshot.problem, [experiment.name for experiment in snapshot.experiments],
              [curve.acr for curve in snapshot.curves.curves])
    """)
    with read_only(*below(store)):
        status = smx("status", "--store", str(store))
        report = smx("report", "finished", "--store", str(store))
        export = smx("export", "finished", "--out", str(tmp_path / "exported"), "--store", str(store))
        query = smx("query", "SELECT config, acr FROM results", "-f", "csv", "--store", str(store))
        tui = run_as_user([sys.executable, "-c", reader])
    assert status.returncode == 0 and "finished" in status.stdout and "0.400" in status.stdout, status.stderr
    assert report.returncode == 0 and "gaussian" in report.stdout, report.stderr
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "exported" / "base.tsv").read_text().splitlines()[1].split("\t")[:5] == ["0", "7", "7",
                                                                                                 "0.8", "1"]
    assert query.returncode == 0 and query.stdout.splitlines() == ["config,acr", "base,0.4"], query.stderr
    assert tui.returncode == 0 and tui.stdout.startswith("True None ['finished'] [0.4]"), tui.stdout + tui.stderr
    assert files_in(store) == before


def test_writing_commands_on_a_read_only_store_say_it_is_not_writable_and_change_nothing(
    store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "more.tsv"
    log.write_text(CERTIFICATION_LOG)
    before = files_in(store)
    with read_only(*below(store)):
        refused = [smx("worker", "--gpus", "none", "--store", str(store)),
                   smx("import", str(log), "--name", "more", "--method", "gaussian", "--sigma", "0.5",
                       "--store", str(store)),
                   smx("cancel", "finished", "--store", str(store))]
    for result in refused:
        assert_refused(result, f"cannot write to the store {store}: this user may not write to it",
                       "creates smx.db-shm and smx.db-wal beside it", "Fix: make it and what it holds writable",
                       "or copy the store somewhere writable")
    assert files_in(store) == before


def test_a_read_only_database_file_is_named_and_nothing_changes(store: Path, tmp_path: Path) -> None:
    log = tmp_path / "more.tsv"
    log.write_text(CERTIFICATION_LOG)
    database = store / "smx.db"
    before = files_in(store)
    with read_only(database):
        status = smx("status", "--store", str(store))
        refused = [smx("worker", "--gpus", "none", "--store", str(store)),
                   smx("import", str(log), "--name", "more", "--method", "gaussian", "--sigma", "0.5",
                       "--store", str(store))]
    assert status.returncode == 0 and "finished" in status.stdout, status.stderr
    for result in refused:
        assert_refused(result, f"cannot write to {database}: the file is read-only",
                       f"Fix: make it writable (chmod u+w {database})")
    assert files_in(store) == before


def test_a_read_only_store_that_another_process_writes_is_read_with_its_latest_commits(store: Path) -> None:
    # That process (as this test, its owner) has the database open: smx.db-wal holds a commit smx.db does not yet.
    with closing(sqlite3.connect(store / "smx.db")) as writer:
        writer.execute("UPDATE experiments SET name = 'renamed'")
        writer.commit()
        assert (store / "smx.db-wal").stat().st_size > 0
        with read_only(store / "smx.db", store):  # the directory and smx.db; the writer's -shm and -wal stay
            status = smx("status", "--store", str(store))
    assert status.returncode == 0 and "renamed" in status.stdout and "finished" not in status.stdout, status.stderr


def test_a_read_only_store_an_older_smx_wrote_says_it_needs_an_upgrade_and_changes_nothing(store: Path) -> None:
    with closing(sqlite3.connect(store / "smx.db")) as database:
        database.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),))
        database.commit()
    before = files_in(store)
    with read_only(*below(store)):
        status = smx("status", "--store", str(store))
    assert_refused(status, f"cannot write to the store {store} (it has schema version {SCHEMA_VERSION - 1}, which "
                           f"this smx must first upgrade to {SCHEMA_VERSION}): this user may not write to it")
    assert files_in(store) == before


def test_lock_files_this_user_may_not_open_are_named(store: Path, tmp_path: Path) -> None:
    # Left by another user (or by root) in a store this user may otherwise write.
    log = tmp_path / "more.tsv"
    log.write_text(CERTIFICATION_LOG)
    locks = [store / "locks" / "schema.lock", store / "locks" / "cpu-slot0.lock"]
    for lock in locks:
        lock.touch()
    before = files_in(store)
    with read_only(*locks):
        worker = smx("worker", "--gpus", "none", "--store", str(store))
        imported = smx("import", str(log), "--name", "more", "--method", "gaussian", "--sigma", "0.5",
                       "--store", str(store))
    assert_refused(worker, f"cannot write to {locks[1]}: Permission denied", f"Fix: make {locks[1]} writable")
    assert_refused(imported, f"cannot write to {locks[0]}: Permission denied", f"Fix: make {locks[0]} writable")
    assert files_in(store) == before
