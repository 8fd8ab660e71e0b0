"""The store's schema version and the upgrade of an older store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from smx.db.models import SCHEMA_VERSION
from smx.db.store import StoreError, open_store, resolve_location, stored_version
from smx.plan import build_plan
from smx.scheduler import queue
from smx.spec import load_spec
from tests.specs import tiny_spec
from tests.test_fuzz_cli import run_cli


def files_in(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory below `folder`, with its size and modification time: what a command changed."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*")}


def assert_refused(result: tuple[int, str, str], *expected: str) -> str:
    """The command exited 2 with one clear message holding every `expected` text, and no traceback."""
    code, out, err = result
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in out + err, err
    message = " ".join(err.split())
    for text in expected:
        assert text in message, (text, message)
    return message


def test_an_older_store_is_upgraded_when_a_reading_command_opens_it(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE analysis_results"))
        connection.execute(text("DROP INDEX ix_certificates_curve"))
        connection.execute(text("ALTER TABLE jobs DROP COLUMN slurm_job_id"))
        connection.execute(text("ALTER TABLE jobs DROP COLUMN attempt_start_progress"))
        connection.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    reopened = open_store(str(tmp_path / "store"), create=False)
    assert stored_version(reopened) == SCHEMA_VERSION
    assert inspect(reopened.engine).has_table("analysis_results")
    assert "ix_certificates_curve" in {index["name"] for index in inspect(reopened.engine).get_indexes("certificates")}
    assert {"slurm_job_id", "attempt_start_progress"} <= {column["name"]
                                                          for column in inspect(reopened.engine).get_columns("jobs")}


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
    assert not (tmp_path / "files").exists()  # refused before any directory was made for it
    # An SQLite URL would keep the database away from the store's files: the directory it names is the fix.
    for url, directory in ((f"sqlite:///{tmp_path}/store/smx.db", tmp_path / "store"),
                           (f"sqlite:///{tmp_path}/store", tmp_path / "store")):
        with pytest.raises(StoreError) as refused:
            open_store(url)
        assert refused.value.message == (
            f"--store / SMX_STORE {url!r} is an SQLite URL, but smx keeps an SQLite store as a directory: smx.db with "
            f"its checkpoints and logs beside it.\nFix: pass that directory, as in --store {directory}.")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=f"as in --store {tmp_path / 'runs'}\\.$"):
        open_store("sqlite:///runs/smx.db")  # three slashes: a path from the current directory, as SQLite reads it
    assert sorted(tmp_path.iterdir()) == []
    # A directory whose name merely starts with "sqlite" is a directory.
    runs = tmp_path / "sqlite-runs"
    assert resolve_location("sqlite-runs") == (f"sqlite:///{runs / 'smx.db'}", runs)
    assert resolve_location("postgres://u:p@db.example/smx")[0] == "postgresql+psycopg://u:p@db.example/smx"
    assert resolve_location("postgresql://u:p@db.example/smx") == ("postgresql+psycopg://u:p@db.example/smx",
                                                                   tmp_path / "files")


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:secret@host:54x2/db", "'postgresql://u:***@host:54x2/db'"),
    ("postgresql://u:secret@[::1", "'postgresql://u:***@[::1'"),
    ("postgres://u:secret@host:/db", "'postgres://u:***@host:/db'"),
])
def test_a_malformed_server_url_is_one_clear_error_that_shows_the_form(
    url: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMX_STORE_FILES", str(tmp_path / "files"))
    for command in (["status"], ["worker", "--gpus", "none"], ["tui"]):
        message = assert_refused(run_cli(*command, "--store", url), f"the store URL {shown} is malformed",
                                 "Fix: write it as postgresql://user:password@host:port/database")
        assert "secret" not in message
    assert not (tmp_path / "files").exists()


def test_a_schema_version_that_is_no_number_is_a_clear_error_and_nothing_is_written(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    open_store(str(store_dir)).engine.dispose()
    with sqlite3.connect(store_dir / "smx.db") as database:
        database.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    database.close()
    before = files_in(store_dir)
    spec = tmp_path / "spec.toml"
    spec.write_text(tiny_spec("junk-version"))
    for command in (["status"], ["worker", "--gpus", "none"], ["submit", str(spec), "--gpus", "none"]):
        assert_refused(run_cli(*command, "--store", str(store_dir)),
                       f"the store at {store_dir} has schema version 'abc', which no smx writes",
                       "Fix: put back the version number")
    with pytest.raises(StoreError, match="schema version 'abc'"):
        open_store(str(store_dir), create=False)
    assert files_in(store_dir).keys() - before.keys() <= {"locks/schema.lock"}
    with sqlite3.connect(store_dir / "smx.db") as database:
        assert database.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("abc",)]
    database.close()


def test_a_worker_pointed_where_there_is_no_store_creates_none(tmp_path: Path) -> None:
    typo = tmp_path / "typo-store"
    assert_refused(run_cli("worker", "--store", str(typo), "--gpus", "none"),
                   f"no smx store at {typo}", "Fix: run `smx submit")
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(run_cli("worker", "--store", str(empty), "--gpus", "none"), f"no smx store at {empty}")
    assert list(empty.iterdir()) == []


def test_an_experiments_best_acr_is_the_results_views_over_its_current_plan(store) -> None:
    from smx.db.models import Aggregate, CertifiedAccuracy, Experiment, ExperimentJob, Job
    from smx.db.queries import experiments_overview

    def summary(job_key: str, config_name: str, acr: float) -> Aggregate:
        return Aggregate(job_key=job_key, certify_key="certify", experiment="edited", config_name=config_name,
                         method="gaussian", sigma=0.25, num_samples=2, acr=acr, clean_accuracy=1.0, abstain_rate=0.0,
                         certified=[CertifiedAccuracy(radius=radius, accuracy=1.0 - radius) for radius in (0.0, 0.5)])

    with store.session() as session:
        session.add_all(Job(key=key, kind=kind, name=key, config={})
                        for key, kind in [("certify", "certify"), ("aggregate-old", "aggregate"),
                                          ("aggregate-now", "aggregate")])
        edited, empty = (Experiment(name=name, spec_path="", spec_text="", spec_hash="")
                         for name in ("edited", "empty"))
        session.add_all([edited, empty])
        session.flush()
        # The spec was edited: the old plan's aggregate (and its better ACR) stays in the store, no longer shown.
        session.add_all([ExperimentJob(experiment_id=edited.id, job_key="certify", config_name="a"),
                         ExperimentJob(experiment_id=edited.id, job_key="aggregate-now", config_name="a")])
        session.add_all([summary("aggregate-old", "a", 0.9), summary("aggregate-now", "a", 0.5),
                         summary("aggregate-now", "b", 0.7)])
    with store.read_session() as session:
        best = {overview.name: overview.best_acr for overview in experiments_overview(session)}
        in_view = dict(session.execute(text("SELECT experiment, MAX(acr) FROM results GROUP BY experiment")).all())
    assert best == {"edited": 0.7, "empty": None}
    assert in_view == {"edited": 0.7}


def test_until_its_aggregate_is_done_an_experiments_best_acr_is_its_certified_configs_starred(store) -> None:
    from sqlalchemy import update

    from smx.db.models import Certificate, Experiment, ExperimentJob, Job
    from smx.db.queries import experiments_overview

    certified = {"done-a": ("done", [(0.5, 1), (1.0, 0)]), "done-b": ("done", [(0.4, 1), (0.4, 1)]),
                 "running": ("running", [(2.0, 1)])}  # a running job's certificates so far do not count
    with store.session() as session:
        experiment = Experiment(name="halfway", spec_path="", spec_text="", spec_hash="")
        session.add(experiment)
        session.add_all(Job(key=key, kind="certify", name=key, config={}, status=status)
                        for key, (status, _) in certified.items())
        session.add(Job(key="aggregate", kind="aggregate", name="aggregate", config={}))
        session.flush()
        session.add_all(ExperimentJob(experiment_id=experiment.id, job_key=key, config_name=key)
                        for key in [*certified, "aggregate"])
        session.add_all(Certificate(job_key=key, sample_index=index, label=0, prediction=0, radius=radius,
                                    correct=correct, seconds=0.1)
                        for key, (_, rows) in certified.items() for index, (radius, correct) in enumerate(rows))
    cache: dict = {}
    with store.read_session() as session:
        [overview] = experiments_overview(session, cache)
    assert overview.best_acr == pytest.approx(0.4) and overview.best_acr_provisional
    assert set(cache) == {"done-a", "done-b"}
    with store.session() as session:  # done-b runs again, to other certificates: read again, not from the cache
        session.execute(update(Certificate).where(Certificate.job_key == "done-b").values(radius=0.2))
        session.execute(update(Job).where(Job.key == "done-b").values(attempts=2))
    with store.read_session() as session:
        assert experiments_overview(session, cache)[0].best_acr == pytest.approx(0.25)
    code, out, err = run_cli("status", "--store", store.location)
    assert code == 0, err
    assert "0.250*" in out
    assert "* provisional: the best of the configs certified so far" in " ".join(out.split())


def test_reading_commands_do_not_wait_for_a_transaction_another_program_holds_open(tmp_path: Path) -> None:
    import time

    open_store(str(tmp_path / "store")).engine.dispose()
    holder = sqlite3.connect(tmp_path / "store" / "smx.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # as the sqlite3 shell or a database browser in the middle of an edit
    holder.execute("UPDATE meta SET value = value")
    try:
        started = time.monotonic()
        for arguments in (("status",), ("query", "SELECT count(*) FROM jobs")):
            code, out, err = run_cli(*arguments, "--store", str(tmp_path / "store"))
            assert code == 0, err
        assert time.monotonic() - started < 10  # the busy timeout is 60 s
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_write_lock_held_past_the_busy_timeout_is_one_clear_error_and_skips_a_progress_report(
        tmp_path: Path, monkeypatch) -> None:
    from smx.db import store as store_module
    from smx.db.models import Job
    from smx.db.store import StoreBusy
    from smx.tasks.progress import ProgressReporter

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    store = open_store(str(tmp_path / "store"))
    with store.session() as session:
        session.add(Job(key="train-a", kind="train", name="train/a", config={}, runtime={}, status="running",
                        attempts=1))
    holder = sqlite3.connect(tmp_path / "store" / "smx.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # as the sqlite3 shell or a database browser in the middle of an edit
    holder.execute("UPDATE meta SET value = value")
    try:
        ProgressReporter(store, "train-a", attempt=1)(0.5, "epoch 1/2")  # skipped: the training goes on
        with pytest.raises(StoreBusy, match=r"stayed locked for over 0 s: another program holds a write transaction "
                                            r"open on it .*\nFix: end that transaction"):
            with store.session() as session:
                session.execute(text("UPDATE jobs SET progress = 0.5"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ProgressReporter(store, "train-a", attempt=1)(0.75, "epoch 2/2")
    with store.read_session() as session:
        assert session.get(Job, "train-a").progress_text == "epoch 2/2"


def test_a_copy_out_of_wal_mode_is_switched_back_when_a_command_opens_it(tmp_path: Path) -> None:
    open_store(str(tmp_path / "store")).engine.dispose()
    connection = sqlite3.connect(tmp_path / "store" / "smx.db")
    assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    connection.close()
    assert run_cli("status", "--store", str(tmp_path / "store"))[0] == 0
    connection = sqlite3.connect(tmp_path / "store" / "smx.db")
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_a_json_value_damaged_by_hand_is_a_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(tiny_spec("tiny", method="gaussian"))
    store = tmp_path / "store"
    queue.enqueue(open_store(str(store)), build_plan(load_spec(spec)), spec)
    connection = sqlite3.connect(store / "smx.db")
    connection.execute("UPDATE jobs SET config = '{bad'")
    connection.commit()
    connection.close()
    for arguments in (("status", "tiny"), ("report", "tiny"), ("retry", "tiny")):
        assert_refused(run_cli(*arguments, "--store", str(store)), "holds a JSON value (a job's config, say) that is "
                       "not valid JSON", "Fix: put back the value it held")


def test_an_empty_store_option_is_refused_rather_than_read_as_the_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.toml"
    spec.write_text(tiny_spec("tiny", method="gaussian"))
    for arguments in (("status",), ("submit", str(spec), "--dry-run"), ("query", "SELECT 1")):
        assert_refused(run_cli(*arguments, "--store", ""), "--store is empty (an unset shell variable?)",
                       "Fix: give a store directory or PostgreSQL URL, or leave --store out")
    assert list(tmp_path.iterdir()) == [spec]
