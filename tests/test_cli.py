"""End to end through the real `smx` command: submit a tiny spec, then read every table it filled."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from filelock import FileLock

from tests.conftest import smx_command
from tests.servers import fresh_postgres_database
from tests.specs import tiny_spec, variants
from tests.test_fuzz_cli import run_cli

TINY_SPEC = tiny_spec("tiny", epochs=1, max_samples=6, description="smallest end-to-end run") + variants(
    "gaussian") + """
[[variant]]
name = "smoothmix"
train.method = "smoothmix"
train.smoothmix = { eta = 5.0, alpha = 1.0, steps = 1, noise_samples = 2, warmup = 1 }
"""


@dataclass
class StoreTarget:
    """A store as the CLI is pointed at it: --store's value, and the directory that holds its files."""

    location: str
    files: Path

    @classmethod
    def directory(cls, path: Path) -> StoreTarget:
        return cls(str(path), path)

    def environment(self) -> dict[str, str]:
        return {**os.environ, "SMX_STORE": self.location, "SMX_STORE_FILES": str(self.files)}


def run_smx(*arguments: str, store: StoreTarget, check: bool = True) -> subprocess.CompletedProcess:
    environment = {**store.environment(), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(smx_command(*arguments), capture_output=True, text=True, env=environment, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"smx {' '.join(arguments)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def query_json(sql: str, store: StoreTarget) -> list[dict]:
    return json.loads(run_smx("query", sql, "--format", "json", store=store).stdout)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def submitted(request, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Path, StoreTarget, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("e2e")
    spec = root / "tiny.toml"
    spec.write_text(TINY_SPEC)
    if request.param == "sqlite":
        store = StoreTarget.directory(root / "store")
        yield spec, store, run_smx("submit", str(spec), store=store)
        return
    with fresh_postgres_database() as url:
        store = StoreTarget(url, root / "store")
        yield spec, store, run_smx("submit", str(spec), store=store)


def test_submit_runs_every_job_and_fills_every_table(submitted) -> None:
    spec, store, result = submitted
    assert "\nall 5 jobs done" in result.stdout  # on a line of its own after the live progress
    jobs = query_json("SELECT kind, status, attempts, log_path FROM jobs ORDER BY kind", store)
    assert [job["kind"] for job in jobs] == ["aggregate", "certify", "certify", "train", "train"]
    assert {job["status"] for job in jobs} == {"done"}
    assert all(Path(job["log_path"]).is_file() for job in jobs)
    counts = query_json(
        "SELECT (SELECT count(*) FROM experiments) AS experiments, (SELECT count(*) FROM experiment_jobs) AS members,"
        " (SELECT count(*) FROM job_parents) AS edges, (SELECT count(*) FROM train_metrics) AS epochs,"
        " (SELECT count(*) FROM certificates) AS certificates, (SELECT count(*) FROM aggregates) AS aggregates,"
        " (SELECT count(*) FROM certified_accuracy) AS accuracies, (SELECT count(*) FROM results) AS results", store)[0]
    assert counts == {"experiments": 1, "members": 5, "edges": 4, "epochs": 2, "certificates": 12, "aggregates": 2,
                      "accuracies": 2 * 17, "results": 2}
    checkpoints = query_json("SELECT path, sha256, size FROM checkpoints WHERE final", store)
    assert len(checkpoints) == 2
    for checkpoint in checkpoints:
        import hashlib

        assert hashlib.sha256(Path(checkpoint["path"]).read_bytes()).hexdigest() == checkpoint["sha256"]
    results = query_json("SELECT config, method, sigma, acr, clean_accuracy, acc_0_00 FROM results ORDER BY config",
                         store)
    assert [(row["config"], row["method"], row["sigma"]) for row in results] == [
        ("gaussian", "gaussian", 0.5), ("smoothmix", "smoothmix", 0.5)]
    for row in results:
        assert 0.0 <= row["acr"] <= 4 * 0.5
        assert row["acc_0_00"] == pytest.approx(row["clean_accuracy"])
    log_header = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    assert (store.files / "results" / "tiny" / "gaussian.tsv").read_text().startswith(log_header)


def test_a_second_submit_runs_nothing(submitted) -> None:
    spec, store, _ = submitted
    before = query_json("SELECT key, finished_at FROM jobs ORDER BY key", store)
    result = run_smx("submit", str(spec), store=store)
    assert "0 new, 5 cached" in result.stdout
    assert query_json("SELECT key, finished_at FROM jobs ORDER BY key", store) == before
    retried = " ".join(run_smx("retry", "tiny", store=store).stdout.split())
    assert retried.startswith("0 job(s) queued again. Nothing failed or cancelled there (5 done;")
    cancelled = " ".join(run_smx("cancel", "tiny", store=store).stdout.split())
    assert cancelled == "0 job(s) cancelled. Nothing there was pending or running (5 done)."


def test_a_spec_from_elsewhere_cannot_take_over_an_experiment_by_its_name(submitted, tmp_path: Path) -> None:
    spec, store, _ = submitted
    members = "SELECT config_name FROM experiment_jobs ORDER BY config_name, job_key"
    before = query_json(members, store)
    other = tmp_path / "other.toml"
    other.write_text(TINY_SPEC.split("[[variant]]")[0])  # the same experiment name, one config
    for extra, code in ((["--dry-run"], 0), ([], 2)):  # a dry run only warns
        result = run_smx("submit", str(other), *extra, store=store, check=False)
        assert result.returncode == code and "Traceback" not in result.stderr
        assert (f"{other.resolve()}: experiment.name: the store's experiment 'tiny' was submitted from "
                f"{spec.resolve()}") in " ".join(result.stderr.split())
    assert query_json(members, store) == before
    moved = tmp_path / "moved.toml"  # a spec file moved elsewhere still submits its experiment
    spec.rename(moved)
    try:
        assert "0 new, 5 cached" in run_smx("submit", str(moved), store=store).stdout
        assert query_json(members, store) == before
    finally:
        moved.rename(spec)
    run_smx("submit", str(spec), store=store)

    log = tmp_path / "published.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.5\t1\t0:00:01.000000\n")
    run_smx("import", str(log), "--name", "published", "--method", "gaussian", "--sigma", "0.5", store=store)
    named_like_it = tmp_path / "named-like-it.toml"
    named_like_it.write_text(TINY_SPEC.replace('name = "tiny"', 'name = "published"'))
    result = run_smx("submit", str(named_like_it), store=store, check=False)
    assert result.returncode == 2
    assert "experiment 'published' holds imported certification logs" in " ".join(result.stderr.split())
    # Names alike but for case would share a results folder on macOS and Windows.
    named_like_it.write_text(TINY_SPEC.replace('name = "tiny"', 'name = "Tiny"'))
    result = run_smx("submit", str(named_like_it), store=store, check=False)
    assert result.returncode == 2 and one_line(result.stderr) == (
        f"error: {named_like_it.resolve()}: experiment.name: 'Tiny' differs from the store's experiment 'tiny' only in "
        "case, and their results folders would be one where file names ignore case (macOS, Windows). Fix: name the "
        "experiment 'tiny' if it is that one, or give it a name of its own."), result.stderr
    other_log = tmp_path / "other.tsv"
    other_log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.75\t1\t0:00:01.000000\n")
    for options, message in ((("--name", "PUBLISHED"), "experiment 'PUBLISHED' differs from the experiment "
                              "'published' only in case"),
                             (("--name", "published", "--config", "Published"), "config 'Published' differs from "
                              "the config 'published' only in case")):
        result = run_smx("import", str(other_log), *options, "--method", "gaussian", "--sigma", "0.5", store=store,
                         check=False)
        assert result.returncode == 2 and message in one_line(result.stderr), result.stderr
    assert query_json("SELECT name FROM experiments ORDER BY name", store) == [{"name": "published"},
                                                                               {"name": "tiny"}]


def test_dry_run_shows_cached_jobs_and_changes_nothing(submitted, tmp_path: Path) -> None:
    spec, store, _ = submitted
    edited = tmp_path / "edited.toml"
    edited.write_text(TINY_SPEC.replace("max_samples = 6", "max_samples = 8"))
    before = query_json("SELECT count(*) AS jobs FROM jobs", store)
    result = run_smx("submit", str(edited), "--dry-run", store=store)
    lines = [line for line in result.stdout.splitlines() if "│" in line]
    assert sum("cached" in line for line in lines) == 2  # the two trainings
    assert sum("to run" in line for line in lines) == 3  # certify x2 and the aggregate
    assert query_json("SELECT count(*) AS jobs FROM jobs", store) == before


def test_exports_and_plot(submitted, tmp_path: Path) -> None:
    _, store, _ = submitted
    csv_text = run_smx("query", "--experiment", "tiny", "--format", "csv", store=store).stdout
    header = csv_text.splitlines()[0].split(",")
    assert header[:4] == ["experiment", "config", "method", "sigma"]
    assert "acr" in header and "acc_0_50" in header
    assert len(csv_text.splitlines()) == 3
    table = run_smx("query", "--experiment", "tiny", store=store).stdout  # a pipe: whole rows, not folded
    assert [name.strip() for name in table.splitlines()[1].strip("┃").split("┃")] == header
    markdown = run_smx("query", "--experiment", "tiny", "--format", "md", store=store).stdout
    assert markdown.startswith("| experiment | config |")
    status = run_smx("status", store=store).stdout
    assert "tiny" in status
    png = tmp_path / "tiny.png"
    run_smx("plot", "tiny", "--out", str(png), store=store)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> StoreTarget:
    """A store whose experiment 'published' has results without any training: a small imported certification log."""
    root = tmp_path_factory.mktemp("imported")
    log = root / "run.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.5\t1\t0:00:01.000000\n"
                   "1\t2\t2\t1.25\t1\t0:00:01.000000\n2\t1\t-1\t0.0\t0\t0:00:01.000000\n")
    store = StoreTarget.directory(root / "store")
    run_smx("import", str(log), "--name", "published", "--method", "gaussian", "--sigma", "0.5", store=store)
    return store


def files_under(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")}


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_cancel_needs_no_submitit_where_slurm_is_not_used(imported: StoreTarget, tmp_path: Path) -> None:
    # submitit is the [cluster] extra's: a plain install has none, which `import submitit` here makes so.
    blocker = tmp_path / "no_submitit"
    blocker.mkdir()
    (blocker / "submitit.py").write_text("raise ImportError('submitit is not installed')\n")
    environment = {**imported.environment(), "PYTHONPATH": os.pathsep.join([str(blocker), str(Path.cwd())])}
    result = subprocess.run(smx_command("cancel", "published"), capture_output=True, text=True, env=environment,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Nothing there was pending or running" in result.stdout and "submitit" not in result.stderr


def test_plot_refuses_an_out_path_it_cannot_write_and_writes_nothing(imported: StoreTarget, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    expected = {
        "x.xyz": "the extension .xyz is no image format that smx plot writes (.png, .pdf or .svg). Fix: end the file "
                 "name with .png, .pdf or .svg, or give a directory (existing, or ending in /) to write "
                 "published.png in.",
        "noext": "a name without an extension is no image format that smx plot writes (.png, .pdf or .svg).",
        "afile/x.png": f"{tmp_path / 'afile'} is a file, not a directory. Fix: choose another path with --out.",
        "afile/sub/x.png": f"{tmp_path / 'afile'} is a file, not a directory.",
        "afile/sub": f"{tmp_path / 'afile'} is a file, not a directory.",  # not "a name without an extension"
    }
    before = files_under(tmp_path)
    for out, message in expected.items():
        result = run_smx("plot", "published", "--out", str(tmp_path / out), store=imported, check=False)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
        assert one_line(result.stderr).startswith(f"error: --out {tmp_path / out}: {message}"), result.stderr
    # `--out "$DIR"` with DIR unset: named, not written into the current directory.
    for command in ("plot", "export"):
        empty = run_smx(command, "published", "--out", "", store=imported, check=False)
        assert empty.returncode == 2 and one_line(empty.stderr) == (
            "error: --out is empty (an unset shell variable?). Fix: give a path, or leave --out out to write to the "
            "default place in the store."), empty.stderr
    assert files_under(tmp_path) == before
    # Where no one may create a file, root included.
    unwritable = run_smx("plot", "published", "--out", "/proc/smx-plot.png", store=imported, check=False)
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr, unwritable.stderr
    assert one_line(unwritable.stderr).startswith("error: cannot write /proc/smx-plot.png: ")
    assert one_line(unwritable.stderr).endswith("Fix: choose a writable directory with --out.")


def test_plot_writes_the_format_of_its_out_path_or_experiment_png_in_a_directory(imported: StoreTarget,
                                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "plots"
    folder.mkdir()
    written = {folder: folder / "published.png", tmp_path / "new" / "curves.PDF": tmp_path / "new" / "curves.PDF",
               tmp_path / "curves.svg": tmp_path / "curves.svg"}
    for out, path in written.items():
        assert run_smx("plot", "published", "--out", str(out), store=imported).stdout == f"wrote {path}\n"
    # A trailing slash asks for a directory, made when it does not exist yet.
    assert run_smx("plot", "published", "--out", f"{tmp_path / 'made'}/", store=imported).stdout == \
        f"wrote {tmp_path / 'made' / 'published.png'}\n"
    assert (folder / "published.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "new" / "curves.PDF").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:1000]
    # Nothing else: no file beside the directory, no temporary file left behind.
    assert files_under(tmp_path) == {Path("plots"), Path("plots/published.png"), Path("new"), Path("new/curves.PDF"),
                                     Path("curves.svg"), Path("made"), Path("made/published.png")}


def test_query_refuses_what_it_cannot_answer_faithfully(imported: StoreTarget) -> None:
    refused = {
        (";",): "empty query: it holds no statement that returns rows.",
        ("SELECT ?",): "query parameters (?, :name, $1) are not supported",
        ("SELECT config AS name, experiment AS name FROM results", "-f", "json"):
            "--format json: several columns are named 'name', and a JSON object keeps one value per name. "
            "Fix: give each column its own name with AS",
    }
    for arguments, message in refused.items():
        result = run_smx("query", *arguments, store=imported, check=False)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
        assert one_line(result.stderr).startswith(f"error: {message}"), result.stderr
    shared = run_smx("query", "SELECT config AS name, experiment AS name FROM results", "-f", "csv", store=imported)
    assert shared.stdout == "name,name\nrun,published\n"
    infinite = run_smx("query", "SELECT 1e999 AS big, -1e999 AS small, 0.5 AS half", "-f", "json", store=imported)
    assert json.loads(infinite.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON")) == [
        {"big": None, "small": None, "half": 0.5}]


def test_submit_refuses_options_that_do_not_go_together_before_writing_anything(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    slurm_spec = tmp_path / "slurm.toml"
    slurm_spec.write_text(TINY_SPEC + '\n[executor]\nkind = "slurm"\n')
    store = StoreTarget.directory(tmp_path / "store")
    slurm_fix = ("(Slurm jobs take their GPUs and CPUs from [executor.slurm] gpus_per_job and cpus_per_job), or use "
                 "--executor local.")
    refused = {
        (str(spec), "--dry-run", "--detach"): "--dry-run and --detach cannot be used together: a dry run starts "
                                              "nothing to run in the background. Fix: drop --detach",
        (str(spec), "--executor", "slurm", "--gpus", "0,1"): "--gpus: only for jobs run on this machine, but "
                                                             f"--executor slurm sends them to Slurm. Fix: drop --gpus "
                                                             f"{slurm_fix}",
        # Given, even at their defaults, they say the user expects them to count.
        (str(spec), "--executor", "slurm", "--jobs-per-gpu", "1", "--cpu-jobs", "1", "--dry-run"):
            "--jobs-per-gpu, --cpu-jobs: only for jobs run on this machine, but --executor slurm sends them to Slurm. "
            "Fix: drop --jobs-per-gpu and --cpu-jobs",
        (str(slurm_spec), "--cpu-jobs", "2"): '--cpu-jobs: only for jobs run on this machine, but [executor] kind = '
                                              '"slurm" (in the spec or the user config) sends them to Slurm.',
    }
    for arguments, message in refused.items():
        result = run_smx("submit", *arguments, store=store, check=False)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
        assert one_line(result.stderr).startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "store").exists()
    # Left at their defaults, the options for this machine do not stand in Slurm's way.
    planned = run_smx("submit", str(spec), "--executor", "slurm", "--dry-run", store=store)
    assert "to run" in planned.stdout
    assert not (tmp_path / "store").exists()


def test_user_errors_exit_2_without_traceback(submitted, tmp_path: Path) -> None:
    _, store, _ = submitted
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_SPEC.replace("sigma = 0.5", "sigmaa = 0.5"))
    for arguments in (("validate", str(bad)), ("submit", str(bad)), ("validate", str(tmp_path / "missing.toml")),
                      ("query", "DELETE FROM jobs"), ("query", "SELECT * FROM nope"), ("plot", "nope"),
                      ("retry", "no-such-thing"), ("status", "nope")):
        result = run_smx(*arguments, store=store, check=False)
        assert result.returncode == 2, (arguments, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "error:" in result.stderr
        if "nope" in arguments:
            assert "no experiment named 'nope'" in result.stderr or "no such table: nope" in result.stderr
    unnamed = run_smx("plot", "", "--out", str(tmp_path / "x.png"), store=store, check=False)
    assert unnamed.returncode == 2 and "no experiment named ''" in unnamed.stderr
    empty = run_smx("status", store=StoreTarget.directory(tmp_path / "nowhere"), check=False)
    assert empty.returncode == 2 and "smx submit" in empty.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_damaged_or_foreign_database_is_a_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    damaged, foreign = tmp_path / "damaged", tmp_path / "foreign"
    damaged.mkdir()
    (damaged / "smx.db").write_bytes(bytes(range(256)) * 20)
    foreign.mkdir()
    connection = sqlite3.connect(foreign / "smx.db")
    connection.execute("CREATE TABLE notes (text)")
    connection.close()
    for location, message in ((damaged, "file is not a database"), (foreign, "is not an smx store")):
        for arguments in (("status",), ("query", "SELECT 1"), ("report", "tiny")):
            result = run_smx(*arguments, store=StoreTarget.directory(location), check=False)
            assert result.returncode == 2 and message in result.stderr, (arguments, result.stderr)
            assert "Traceback" not in result.stderr
    # A dry run shows a store it cannot read as an error, not as one where everything is still to run.
    dry_run = run_smx("submit", str(spec), "--dry-run", store=StoreTarget.directory(damaged), check=False)
    assert dry_run.returncode == 2 and "file is not a database" in dry_run.stderr
    dry_run = run_smx("submit", str(spec), "--dry-run", store=StoreTarget.directory(foreign), check=False)
    assert dry_run.returncode == 2 and "is not an smx store" in dry_run.stderr
    # Nor does a submit fill another program's database with smx's tables.
    refused = run_smx("submit", str(spec), store=StoreTarget.directory(foreign), check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert one_line(refused.stderr) == (f"error: the database {foreign / 'smx.db'} is not an smx store: it holds other "
                                        "tables (notes), and smx writes nothing into another program's database. Fix: "
                                        "point --store / SMX_STORE at a new directory, or at an smx store.")
    connection = sqlite3.connect(foreign / "smx.db")
    assert connection.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not switched to WAL either
    connection.close()
    assert sorted(path.name for path in foreign.iterdir()) == ["smx.db"]
    assert "to run" in run_smx("submit", str(spec), "--dry-run", store=StoreTarget.directory(tmp_path / "new")).stdout
    assert not (tmp_path / "new").exists()


def test_a_postgresql_database_with_another_programs_tables_is_refused(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect, text

    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    with fresh_postgres_database() as url:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE invoices (id integer)"))
        store = StoreTarget(url, tmp_path / "files")
        refused = run_smx("submit", str(spec), store=store, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "is not an smx store: it holds other tables (invoices)" in one_line(refused.stderr)
        assert "Fix: give smx a database of its own (`createdb -O USER smx`)" in one_line(refused.stderr)
        assert ":***@" in refused.stderr and inspect(engine).get_table_names() == ["invoices"]
        engine.dispose()


def test_missing_data_is_refused_before_anything_is_queued(tmp_path: Path) -> None:
    from tests.test_data import write_idx, write_idx_split

    root = tmp_path / "fashion"
    spec = tmp_path / "nodata.toml"
    spec.write_text(tiny_spec("nodata", method="gaussian").replace(
        'dataset = "mnist-mini"', f'dataset = "fashion-mnist"\nroot = "{root}"'))
    store = StoreTarget.directory(tmp_path / "store")
    refused = run_smx("submit", str(spec), store=store, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{spec}: data.root" in refused.stderr and "nothing was queued" in refused.stderr
    assert "train-images-idx3-ubyte" in refused.stderr and "t10k-images-idx3-ubyte" in refused.stderr
    assert not (tmp_path / "store").exists()
    dry_run = run_smx("submit", str(spec), "--dry-run", store=store)
    assert "warning:" in dry_run.stderr and "to run" in dry_run.stdout
    assert "data.root" in run_smx("validate", str(spec), store=store).stderr
    write_idx_split(root, "train", 8, compress=True, seed=0)
    write_idx_split(root, "t10k", 8, compress=False, seed=1)
    assert "warning" not in run_smx("submit", str(spec), "--dry-run", store=store).stderr
    # Test labels of no class would surface only after training: submit reads the labels and the images' header.
    write_idx(root / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 4, 5, 6, 7, 10]), compress=False)
    refused = run_smx("submit", str(spec), store=store, check=False)
    assert refused.returncode == 2 and "nothing was queued" in refused.stderr
    assert "label 10 of item 7 (and 0 more) is no class of fashion-mnist" in refused.stderr
    assert not (tmp_path / "store").exists()
    write_idx_split(root, "t10k", 8, compress=False, seed=1)
    images = root / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # an uncompressed file's size must be the one its header gives
    refused = run_smx("submit", str(spec), store=store, check=False)
    assert refused.returncode == 2 and "but its header announces 6288: it is truncated" in refused.stderr


def test_status_notes_say_why_a_job_died_and_when_a_worker_went_silent(store) -> None:
    from datetime import timedelta

    from smx.db.models import Job, utcnow

    now = utcnow()
    with store.session() as session:
        session.add_all([
            Job(key="a" * 64, kind="train", name="train/killed", config={}, status="failed", attempts=1,
                created_at=now, started_at=now, finished_at=now,
                error="killed by signal 9; log store/logs/a.log\nepoch 3/8 loss 2.1"),
            Job(key="b" * 64, kind="train", name="train/raised", config={}, status="failed", attempts=1,
                created_at=now, started_at=now, finished_at=now,
                error="exit code 2; log store/logs/b.log\nerror: the train split of mnist is not under data root"),
            Job(key="c" * 64, kind="train", name="train/silent", config={}, status="running", attempts=1,
                created_at=now, started_at=now - timedelta(minutes=3), heartbeat_at=now - timedelta(minutes=2)),
            Job(key="d" * 64, kind="train", name="train/beating", config={}, status="running", attempts=1,
                created_at=now, started_at=now - timedelta(minutes=3), heartbeat_at=now),
            Job(key="e" * 64, kind="train", name="train/requeued", config={}, status="pending", attempts=1,
                created_at=now, started_at=now - timedelta(minutes=3), error="interrupted; resumes"),
        ])
    shown = run_smx("status", "--jobs", store=StoreTarget(store.location, store.root)).stdout
    rows = {line.split("│")[2].split()[0]: line.split("│")[-2].strip() for line in shown.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    # None of these jobs is in an experiment, as if an edited spec had left them behind.
    assert sum("(in no experiment)" in line for line in shown.splitlines()) == 5
    assert rows["train/killed"] == "killed by signal 9; log store/logs/a.log"
    assert rows["train/raised"].startswith("the train split of mnist")
    assert rows["train/silent"].startswith("no word from its worker for 0:02:")
    assert rows["train/beating"] == ""
    elapsed = {line.split("│")[2].split()[0]: line.split("│")[6].strip() for line in shown.splitlines()
               if line.startswith("│") and line.split("│")[1].strip()}
    assert elapsed["train/beating"].startswith("0:03:") and elapsed["train/requeued"] == ""  # waiting, not running


def enqueue_spec(store, path: Path, text: str):  # type: ignore[no-untyped-def]
    """Write a spec and queue its experiment in the store without running anything; the plan."""
    from smx.plan import build_plan
    from smx.scheduler import queue
    from smx.spec import load_spec

    path.write_text(text)
    plan = build_plan(load_spec(path))
    queue.enqueue(store, plan, path.resolve())
    return plan


def planned_key(plan, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(job.key for job in plan.jobs if job.name == name)


def experiments_sharing_jobs(store, folder: Path) -> dict:  # type: ignore[type-arg]
    """Experiments a and b, each with a config named base, and `part`, whose configs gaussian and smoothmix are
    theirs: part's jobs were created as train/base and certify/base. Their plans by name."""
    base = '\n[[variant]]\nname = "base"\ntrain.method = "{}"\n'
    return {
        "a": enqueue_spec(store, folder / "a.toml", tiny_spec("a", epochs=1) + base.format("gaussian")),
        "b": enqueue_spec(store, folder / "b.toml", tiny_spec("b", epochs=1) + base.format("smoothmix")),
        "part": enqueue_spec(store, folder / "part.toml",
                             tiny_spec("part", epochs=1) + variants("gaussian", "smoothmix")),
    }


def job_column(shown: str) -> list[str]:
    return [line.split("│")[2].strip() for line in shown.splitlines() if line.startswith("│")]


def test_status_names_jobs_by_the_experiments_config_and_marks_only_jobs_no_experiment_has(store,
                                                                                           tmp_path: Path) -> None:
    from sqlalchemy import update

    from smx.db.models import Job

    plans = experiments_sharing_jobs(store, tmp_path)
    part = plans["part"]
    target = StoreTarget(store.location, store.root)
    assert sorted(job_column(run_smx("status", "part", store=target).stdout)) == [
        "aggregate/part", "certify/gaussian", "certify/smoothmix", "train/gaussian", "train/smoothmix"]
    # An edited spec leaves its old aggregate behind; its training and certification are still part's.
    old_aggregate = planned_key(plans["a"], "aggregate/a")
    edited = enqueue_spec(store, tmp_path / "a.toml", tiny_spec("a", epochs=2) + variants("gaussian"))
    listed = run_smx("status", "--jobs", store=target).stdout
    assert [line.split("│")[1].strip() for line in listed.splitlines() if "(in no experiment)" in line] == [
        old_aggregate[:8]]
    assert planned_key(edited, "aggregate/a")[:8] in listed and "aggregate/part " in listed

    assert run_smx("status", "--failed", store=target).stdout == "no failed jobs in the store.\n"
    smoothmix = planned_key(part, "train/smoothmix")
    with store.session() as session:
        session.execute(update(Job).where(Job.key == smoothmix).values(status="failed", error="boom"))
    everywhere = run_smx("status", "--failed", store=target).stdout
    assert everywhere.startswith(f"train/base ({smoothmix[:12]}), attempt 0") and "no experiment" not in everywhere
    assert run_smx("status", "part", "--failed", store=target).stdout.startswith(
        f"train/smoothmix ({smoothmix[:12]}), attempt 0")
    assert run_smx("status", "a", "--failed", store=target).stdout == "no failed jobs in a.\n"
    # A job that no experiment has can hold the slot that part's pending jobs wait for: part's listing names it.
    with store.session() as session:
        session.execute(update(Job).where(Job.key == old_aggregate).values(status="running"))
    assert (f"Also running, outside part: aggregate/a ({old_aggregate[:8]}, in no experiment) (`smx status --jobs`)."
            in " ".join(run_smx("status", "part", store=target).stdout.split()))


def test_a_dry_run_says_what_submitting_would_do_to_the_jobs_of_removed_configs(tmp_path: Path) -> None:
    from smx.db.store import open_store
    from smx.scheduler import queue

    store = open_store(str(tmp_path / "store"))
    plan = enqueue_spec(store, tmp_path / "x.toml", tiny_spec("x") + variants("gaussian", "smoothmix"))
    running = planned_key(plan, "train/smoothmix")
    assert queue.claim(store, running, device="slurm-7", slot=tmp_path / "slot", pid=1, slurm_job_id="7")
    edited = tmp_path / "x.toml"
    edited.write_text(tiny_spec("x") + variants("gaussian"))
    target = StoreTarget.directory(store.root)
    before = query_json("SELECT key, status FROM jobs ORDER BY key", target)
    shown = " ".join(run_smx("submit", str(edited), "--dry-run", store=target).stdout.split())
    # certify/smoothmix and the aggregate of both configs are pending; the training is running.
    assert "Submitting would cancel 2 pending job(s) that the spec no longer plans (configs removed or changed)." \
        in shown
    assert (f"train/smoothmix ({running[:12]}), which the spec no longer plans, is running and would be left to "
            "finish.") in shown
    assert query_json("SELECT key, status FROM jobs ORDER BY key", target) == before


def test_export_writes_the_certified_configs_of_a_partly_finished_experiment(store, tmp_path: Path) -> None:
    from sqlalchemy import update

    from smx.db.models import Certificate, Job

    part = experiments_sharing_jobs(store, tmp_path)["part"]
    target = StoreTarget(store.location, store.root)
    nothing = run_smx("export", "part", store=target, check=False)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
    assert "experiment 'part' has no results yet" in one_line(nothing.stderr)
    gaussian = planned_key(part, "certify/gaussian")
    with store.session() as session:
        session.execute(update(Job).where(Job.key == gaussian).values(status="done"))
        session.add(Certificate(job_key=gaussian, sample_index=0, label=7, prediction=7, radius=0.5, correct=1,
                                seconds=1.0))
    out = tmp_path / "out"
    exported = run_smx("export", "part", "--out", str(out), store=target)
    assert exported.stdout == f"{out / 'gaussian.tsv'}\n"
    assert one_line(exported.stderr) == ("skipped 1 config(s) whose certify job is not done: smoothmix (pending). "
                                         "Export again once `smx status part` shows them done.")
    assert (out / "gaussian.tsv").read_text().splitlines() == ["idx\tlabel\tpredict\tradius\tcorrect\ttime",
                                                              "0\t7\t7\t0.5\t1\t0:00:01"]


def test_cpu_jobs_has_a_ceiling(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    store = StoreTarget.directory(tmp_path / "store")
    for arguments in (("worker", "--cpu-jobs", "257"), ("submit", str(spec), "--cpu-jobs", "3000000", "--dry-run")):
        result = run_smx(*arguments, store=store, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "Invalid value for '--cpu-jobs': Input should be less than or equal to 256" in result.stderr
    assert not (tmp_path / "store").exists()
    shown = subprocess.run(smx_command("worker", "--help"), capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200"}).stdout
    assert "Jobs run at once when there is no GPU, 1 to 256" in shown


def test_an_interrupted_worker_says_its_job_went_back_to_the_queue_and_exits_130(tmp_path: Path) -> None:
    import signal

    from smx.db.models import Job
    from smx.db.store import open_store

    store = open_store(str(tmp_path / "store"))
    train_key = planned_key(enqueue_spec(store, tmp_path / "long.toml", tiny_spec("long", epochs=50,
                                                                                   method="gaussian")), "train/base")
    target = StoreTarget.directory(tmp_path / "store")
    worker = subprocess.Popen(smx_command("worker", "--gpus", "none"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**target.environment(), "CUDA_VISIBLE_DEVICES": ""})

    def job_pid() -> int | None:
        with store.read_session() as session:
            return session.get(Job, train_key).pid

    try:
        deadline = time.monotonic() + 120
        while job_pid() is None:
            assert time.monotonic() < deadline and worker.poll() is None, "the worker did not start the job"
            time.sleep(0.2)
        worker.send_signal(signal.SIGINT)
        stdout, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert stdout == (f"worker on cpu-slot0: interrupted by SIGINT after it ran 0 job(s), 0 failed; its running job "
                      f"train/base ({train_key[:12]}) was put back in the queue, to resume from the last checkpoint on "
                      "the next `smx submit` or `smx worker`.\n")
    with store.read_session() as session:
        job = session.get(Job, train_key)
        assert (job.status, job.error) == ("pending", "interrupted; resumes from its last checkpoint")


def test_a_stop_request_stops_the_worker_at_its_next_look_wherever_the_signal_landed(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """The handler only records the request: raised from it, the exception was lost when the signal landed in an
    at-fork hook while the job's process started, and the worker ran every job to its end."""
    import signal
    import threading

    from smx.db.models import Job
    from smx.db.store import open_store
    from smx.scheduler import worker
    from smx.scheduler.slots import make_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    store = open_store(str(tmp_path / "store"))
    train_key = planned_key(enqueue_spec(store, tmp_path / "long.toml", tiny_spec("long", epochs=50,
                                                                                   method="gaussian")), "train/base")

    def stop_once_the_job_runs() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with store.read_session() as session:
                if session.get(Job, train_key).pid is not None:
                    break
            time.sleep(0.2)
        worker.request_stop(signal.SIGINT, None)  # as the handler does, in whatever the worker was running then

    stopper = threading.Thread(target=stop_once_the_job_runs)
    stopper.start()
    report = worker.run_worker(store, make_slots(store.locks_dir, [], 1, 1))
    stopper.join()
    assert (report.interrupted_by, report.ran) == ("SIGINT", 0)
    assert report.requeued == f"train/base ({train_key[:12]})"
    with store.read_session() as session:
        assert session.get(Job, train_key).status == "pending"


def test_help_shows_the_defaults_written_in_option_texts() -> None:
    environment = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run(smx_command("submit", "--help"), capture_output=True, text=True, env=environment).stdout
    assert "[default: $SMX_STORE or ./store]" in shown  # not swallowed as console markup
    assert "[default: the spec's or user config's [executor], else local]" in shown


def test_a_failing_job_makes_submit_exit_1_a_worker_exit_3_and_leaves_no_results(tmp_path: Path) -> None:
    from tests.test_data import write_idx_split

    # Compressed images cut short past their header pass submit's check of headers and labels (a compressed
    # file's size says nothing until it is read whole); the job fails reading them.
    data = tmp_path / "data"
    write_idx_split(data, "train", 8, compress=True, seed=0)
    write_idx_split(data, "t10k", 8, compress=False, seed=1)
    images = data / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    spec = tmp_path / "unreadable.toml"
    spec.write_text(tiny_spec("unreadable", epochs=1).replace('dataset = "mnist-mini"',
                                                               f'dataset = "fashion-mnist"\nroot = "{data}"'))
    store = StoreTarget.directory(tmp_path / "store")
    submitted = run_smx("submit", str(spec), "--cpu-jobs", "1", store=store, check=False)
    assert submitted.returncode == 1, submitted.stdout + submitted.stderr
    assert "a worker stopped" not in submitted.stderr  # its job failed, the worker did not
    assert {row["status"] for row in query_json("SELECT status FROM jobs WHERE kind = 'train'", store)} == {"failed"}
    empty = run_smx("query", "--experiment", "unreadable", "--format", "csv", store=store, check=False)
    assert empty.returncode == 2 and empty.stdout == "" and "Traceback" not in empty.stderr  # as smx report says
    said = " ".join(empty.stderr.split())
    assert "experiment 'unreadable' has no results yet (its jobs: 2 pending, 1 failed)" in said
    assert "smx retry unreadable" in said

    run_smx("retry", "unreadable", store=store)
    worker = run_smx("worker", "--gpus", "none", store=store, check=False)
    assert worker.returncode == 3, worker.stdout + worker.stderr
    assert "ran 1 job(s), 1 failed" in worker.stdout


def test_submit_exits_1_when_a_cancelled_job_leaves_the_experiment_unfinished(tmp_path: Path) -> None:
    from smx.db.store import open_store
    from smx.plan import build_plan
    from smx.scheduler import queue
    from smx.spec import load_spec

    spec = tmp_path / "x.toml"
    spec.write_text(tiny_spec("x", epochs=1))
    store = StoreTarget.directory(tmp_path / "store")
    opened = open_store(store.location)
    plan = build_plan(load_spec(spec))
    queue.enqueue(opened, plan, spec)
    opened.engine.dispose()
    (train,) = [job.key for job in plan.jobs if job.kind == "train"]
    run_smx("cancel", train, store=store)
    # Nothing can run: the certify and aggregate jobs wait on the cancelled training, so `submit && report` stops.
    submitted = run_smx("submit", str(spec), "--cpu-jobs", "1", store=store, check=False)
    assert submitted.returncode == 1, submitted.stdout + submitted.stderr
    assert "waiting on a cancelled parent" in submitted.stdout
    assert one_line(submitted.stderr) == ("x did not finish: 1 cancelled, 2 pending (see above; `smx retry x` queues "
                                          "failed and cancelled jobs again).")


def test_detached_submit_runs_in_the_background_unless_another_scheduler_holds_every_slot(tmp_path: Path) -> None:
    spec = tmp_path / "detached.toml"
    spec.write_text(tiny_spec("detached", epochs=1, n=50, max_samples=2))
    store = StoreTarget.directory(tmp_path / "store")
    locks = tmp_path / "store" / "locks"
    locks.mkdir(parents=True)
    with FileLock(locks / "cpu-slot0.lock"):  # the one CPU slot, as another `smx submit` would hold it
        held = " ".join(run_smx("submit", str(spec), "--detach", "--cpu-jobs", "1", store=store).stdout.split())
        assert "held by another smx scheduler on this store; it runs these jobs" in held
        assert "running in the background" not in held
        time.sleep(1)
        assert {row["status"] for row in query_json("SELECT status FROM jobs", store)} == {"pending"}
    started = " ".join(run_smx("submit", str(spec), "--detach", "--cpu-jobs", "1", store=store).stdout.split())
    assert "Scheduler running in the background on 1 of 1 CPU slot(s)" in started
    # A second, foreground submit finds the slot held by the detached scheduler: it says so, and follows the jobs.
    deadline = time.monotonic() + 120
    while "running" not in {row["status"] for row in query_json("SELECT status FROM jobs", store)}:
        assert time.monotonic() < deadline, "the detached scheduler did not start its first job"
        time.sleep(0.2)
    following = " ".join(run_smx("submit", str(spec), "--cpu-jobs", "1", store=store).stdout.split())
    assert "Every slot (1 CPU slot(s)) is held by another smx scheduler on this store; its workers run these jobs" \
        in following and "all 3 jobs done" in following
    assert {row["status"] for row in query_json("SELECT status FROM jobs", store)} == {"done"}
    assert "ran 3 job(s), 0 failed" in (tmp_path / "store" / "logs" / "workers.log").read_text()


def on_terminal(*arguments: str, store: StoreTarget, columns: int = 80) -> list[str]:
    """What `smx ARGUMENTS` shows on a terminal of `columns` columns, line by line, without colours."""
    terminal, attached = os.openpty()
    subprocess.run(smx_command(*arguments), stdout=attached, stderr=attached, timeout=120,
                   env={**store.environment(), "COLUMNS": str(columns), "NO_COLOR": "1"})
    os.close(attached)
    shown = b""
    while chunk := _read_or_empty(terminal):
        shown += chunk
    os.close(terminal)
    return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in shown.decode().splitlines()]


def _read_or_empty(descriptor: int) -> bytes:
    try:
        return os.read(descriptor, 65536)
    except OSError:  # the other end closed: Linux reports EIO
        return b""


def test_status_on_an_80_column_terminal_shows_whole_names_and_dates(submitted) -> None:
    lines = on_terminal("status", store=submitted[1])
    assert max(len(line) for line in lines) <= 80
    (row,) = [line for line in lines if line.startswith("│ tiny ")]
    assert re.search(r"│ 5/5 done +│ +\d\.\d{3} │ \d{4}-\d\d-\d\d \d\d:\d\d │$", row), row


def test_query_rows_too_wide_for_the_terminal_come_as_one_block_per_row(submitted) -> None:
    lines = on_terminal("query", "--experiment", "tiny", store=submitted[1])
    assert max(len(line) for line in lines) <= 80
    assert [line.split()[:2] for line in lines if line.startswith("row ")] == [["row", "1"], ["row", "2"]]
    configs = [line.split("│")[1].strip() for line in lines if line.startswith("config ")]
    assert configs == ["gaussian", "smoothmix"]
    assert len([line for line in lines if re.match(r"acr +│ \d\.\d{1,4}$", line)]) == 2
    assert lines[-1] == "2 row(s)"
    narrow_enough = on_terminal("query", "SELECT config, acr FROM results ORDER BY config", store=submitted[1])
    assert narrow_enough[0].startswith("┏") and "row 1" not in "".join(narrow_enough)


def test_read_commands_do_not_import_torch(submitted) -> None:
    _, store, _ = submitted
    probe = textwrap.dedent("""
        import sys
        from smx.cli import main
        sys.argv = ["smx", *sys.argv[1:]]
        try:
            main()
        except SystemExit:
            pass
        assert "torch" not in sys.modules, "torch was imported"
    """)
    for arguments in (["status"], ["query", "SELECT 1"], ["validate", "experiments/quickstart.toml"]):
        result = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True,
                                env=store.environment(), cwd=Path(__file__).parents[1])
        assert result.returncode == 0, result.stderr


def test_bf16_certification_is_accepted_with_a_warning(tmp_path: Path) -> None:
    spec = tmp_path / "bf16.toml"
    spec.write_text(TINY_SPEC.replace("[certify]\n", '[certify]\nprecision = "bf16"\n'))
    assert 'precision = "bf16"' in spec.read_text()
    result = subprocess.run(smx_command("validate", str(spec)), capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "false certificates" in result.stderr and "tiny" in result.stdout
    # Into a pipe, each message is one line however long (grep finds it), not folded at the width.
    warning = next(line for line in result.stderr.splitlines() if "false certificates" in line)
    assert len(warning) > 80 and warning.startswith("warning:")
    assert warning.endswith("Use fp32 for results you publish.")
    plain = tmp_path / "fp32.toml"
    plain.write_text(TINY_SPEC)
    result = subprocess.run(smx_command("validate", str(plain)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "false certificates" not in result.stderr


def test_paths_with_brackets_are_printed_as_given_not_read_as_markup(tmp_path: Path) -> None:
    folder = tmp_path / "runs[v2]" / "a["
    folder.mkdir(parents=True)
    spec = folder / "b].toml"
    spec.write_text(tiny_spec("brackets", epochs=1, max_samples=2, method="gaussian"))
    code, out, err = run_cli("validate", str(spec))
    assert code == 0 and f"ok {tmp_path}/runs[v2]/a[/b].toml: experiment brackets" in " ".join(out.split()), err
    store = tmp_path / "st[" / "]"
    code, out, err = run_cli("submit", str(spec), "--store", str(store))
    assert code == 0, err
    assert f"Store: {tmp_path}/st[/]" in " ".join(out.split())
    code, out, err = run_cli("status", "--store", str(store))
    assert code == 0 and f"{tmp_path}/st[/]" in "".join(out.split()), err


def test_a_dry_run_refuses_what_the_submission_would(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    (tmp_path / "afile").write_text("")
    code, out, err = run_cli("submit", str(spec), "--dry-run", "--store", str(tmp_path / "afile" / "store"))
    assert code == 2 and f"cannot create the store directory {tmp_path}/afile/store: {tmp_path}/afile is a file" in err
    code, out, err = run_cli("submit", str(spec), "--dry-run", "--gpus", "foo", "--store", str(tmp_path / "store"))
    assert code == 2 and "--gpus 'foo' is not a GPU count" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile", "tiny.toml"]


def test_a_sigma_many_times_the_pixel_range_gets_a_warning_naming_its_keys_and_configs(tmp_path: Path) -> None:
    spec = tmp_path / "typo.toml"
    spec.write_text(TINY_SPEC.replace("sigma = 0.5", "sigma = 50"))
    code, out, err = run_cli("validate", str(spec))
    assert code == 0 and "tiny" in out
    assert err.count("sigma = ") == 1
    assert "train.sigma and certify.sigma = 50 in gaussian, smoothmix" in err and "Did you mean" in err
    spec.write_text(TINY_SPEC.replace("[certify]\n", "[certify]\nsigma = 1e300\n"))
    code, out, err = run_cli("submit", "--dry-run", "--store", str(tmp_path / "store"), str(spec))
    assert code == 0 and err.count("sigma = ") == 1 and "certify.sigma = 1e+300 in gaussian, smoothmix" in err
    spec.write_text(TINY_SPEC.replace("sigma = 0.5", "sigma = 4.0"))
    assert "sigma = " not in run_cli("validate", str(spec))[2]


def test_a_certify_job_reuses_the_certificates_of_the_same_model_and_settings_and_certifies_only_the_rest(
        tmp_path: Path) -> None:
    store = StoreTarget.directory(tmp_path / "store")
    first = tmp_path / "first.toml"
    first.write_text(tiny_spec("first", epochs=1, max_samples=3, method="gaussian"))
    run_smx("submit", str(first), store=store)
    from sqlalchemy import func, select, update

    from smx.db.models import Job, utcnow
    from smx.db.store import open_store

    opened = open_store(store.location, create=False)
    with opened.session() as session:
        keys_before = set(session.scalars(select(Job.key)))
        # As a job planned before certify.batch_size left the keys holds it in its config.
        session.execute(update(Job).where(Job.kind == "certify")
                        .values(config=func.json_set(Job.config, "$.certify.batch_size", 250)))
    # The rows of a pass change no certificate, so they are no part of any job: the same spec with another batch_size
    # runs nothing.
    first.write_text(first.read_text().replace("batch_size = 250", "batch_size = 64"))
    run_smx("submit", str(first), store=store)
    with opened.session() as session:
        assert set(session.scalars(select(Job.key))) == keys_before
    # More images, in other passes: the trained model is shared, and three of its certificates are already stored.
    more = tmp_path / "more.toml"
    more.write_text(tiny_spec("more", epochs=1, max_samples=5, method="gaussian")
                    .replace("batch_size = 250", "batch_size = 40"))
    assert "1 cached" in run_smx("submit", str(more), store=store).stdout
    # Another alpha certifies otherwise: nothing to reuse.
    stricter = tmp_path / "stricter.toml"
    stricter.write_text(tiny_spec("stricter", epochs=1, max_samples=3, method="gaussian")
                        .replace("alpha = 0.01", "alpha = 0.001"))
    run_smx("submit", str(stricter), store=store)

    def certify_jobs() -> dict[str, dict]:
        return {row["name"]: row for row in query_json(
            "SELECT j.key, e.name, j.log_path FROM jobs j JOIN experiment_jobs m ON m.job_key = j.key "
            "JOIN experiments e ON e.id = m.experiment_id WHERE j.kind = 'certify'", store)}

    certify = certify_jobs()
    columns = "sample_index, prediction, radius, correct, pa_lower, count"

    def certificates(name: str) -> list[dict]:
        return query_json(f"SELECT {columns} FROM certificates WHERE job_key = '{certify[name]['key']}' "
                          "ORDER BY sample_index", store)

    assert certificates("more")[:3] == certificates("first") and len(certificates("more")) == 5
    log = Path(certify["more"]["log_path"]).read_text()
    assert f"reused 3 certificate(s) of job {certify['first']['key'][:12]}: the same model and CERTIFY settings" in log
    assert "certifying 5 test images, resuming after 3 already certified; 40 rows per forward pass (at most 40 from " \
        "certify.batch_size)" in log
    assert "reused" not in Path(certify["stricter"]["log_path"]).read_text()

    # A model trained again (its checkpoint was deleted) may have other weights: none of its old certificates count.
    with opened.session() as session:
        session.execute(update(Job).where(Job.kind == "train").values(finished_at=utcnow()))
    opened.engine.dispose()
    retrained = tmp_path / "retrained.toml"
    retrained.write_text(tiny_spec("retrained", epochs=1, max_samples=4, method="gaussian"))
    run_smx("submit", str(retrained), store=store)
    assert "reused" not in Path(certify_jobs()["retrained"]["log_path"]).read_text()


def test_settings_that_waste_a_run_get_a_warning_naming_the_configs(tmp_path: Path) -> None:
    spec = tmp_path / "wasted.toml"
    spec.write_text(tiny_spec("wasted", epochs=2, n=6) + variants("gaussian", "smoothmix", "macer")
                    + "\n[train.macer]\ndeferred_epochs = 2\n")
    code, out, err = run_cli("validate", str(spec))
    assert code == 0, err
    warnings = " ".join(err.split()).split("warning: ")[1:]
    assert warnings == [
        f"{spec}: certify.n = 6 with alpha = 0.01 can certify no image (even n votes of n give a lower bound on pA "
        "under 0.5): every image abstains (in gaussian, smoothmix, macer). ",
        f"{spec}: train.smoothmix.warmup = 10 is longer than the 2 epoch(s) of training, so the ramp-up of eta and "
        "the one-step radius never finishes (in smoothmix). ",
        f"{spec}: train.macer.deferred_epochs = 2 covers all 2 epoch(s), so MACER's robustness term is never trained "
        "(in macer)."]
    spec.write_text(tiny_spec("fine", epochs=2, n=7) + variants("gaussian"))  # 0.01 ** (1 / 7) > 0.5
    assert "warning" not in run_cli("validate", str(spec))[2]


def test_amp_training_and_bf16_certification_run_end_to_end_and_are_recorded(tmp_path: Path, monkeypatch) -> None:
    spec = tmp_path / "opt.toml"
    spec.write_text(tiny_spec("opt", epochs=1, max_samples=2, method="gaussian")
                    .replace("lr = 0.01\n", "lr = 0.01\namp = true\n")
                    .replace("[certify]\n", '[certify]\nprecision = "bf16"\n'))
    store = StoreTarget.directory(tmp_path / "store")
    # A runtime opt-in, unlike those two: it leaves the job keys alone, and a CPU job says it does not apply.
    monkeypatch.setenv("SMX_CUDA_GRAPHS", "1")
    run_smx("submit", str(spec), store=store)
    rows = query_json("SELECT kind, status, json_extract(config, '$.train.amp') AS amp, log_path, config, "
                      "json_extract(config, '$.certify.precision') AS precision FROM jobs ORDER BY kind", store)
    assert [(row["kind"], row["status"]) for row in rows] == [
        ("aggregate", "done"), ("certify", "done"), ("train", "done")]
    assert rows[2]["amp"] == 1 and rows[1]["precision"] == "bf16"
    assert "SMX_CUDA_GRAPHS left unused" in Path(rows[2]["log_path"]).read_text()
    assert "graphs" not in json.dumps(rows[2]["config"])
    assert query_json("SELECT count(*) AS certified FROM certificates", store) == [{"certified": 2}]


def test_cancel_leaves_shared_jobs_alone_and_key_prefixes_match_literally(tmp_path: Path) -> None:
    from smx.db.store import open_store
    from smx.plan import build_plan
    from smx.scheduler import queue
    from smx.spec import load_spec

    store = StoreTarget.directory(tmp_path / "store")
    opened = open_store(store.location)
    for name in ("x", "y"):  # the same config, hence the same training and certification
        spec = tmp_path / f"{name}.toml"
        spec.write_text(tiny_spec(name, method="gaussian"))
        plan = build_plan(load_spec(spec))
        queue.enqueue(opened, plan, spec)
    opened.engine.dispose()
    (train,) = [job.key for job in plan.jobs if job.kind == "train"]
    unused = next(prefix for prefix in ("0000", "ffff", "1234")
                  if not any(job.key.startswith(prefix) for job in plan.jobs))
    refusals = [(("cancel", f"{train[:2]}_{train[3:6]}"), "keys are hexadecimal (0-9, a-f)"),
                (("cancel", ""), "job key prefixes need 4+ characters"),
                (("retry", train[:3]), "job key prefixes need 4+ characters"),
                (("retry", unused), f"no job key in the store starts with '{unused}'")]
    for arguments, problem in refusals:
        result = run_smx(*arguments, store=store, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (arguments, result.stderr)
        message = " ".join(result.stderr.split())
        assert problem in message and message.count("Fix:") == 1 and "`smx status --jobs`" in message, message
    assert {row["status"] for row in query_json("SELECT status FROM jobs", store)} == {"pending"}

    said = " ".join(run_smx("cancel", "x", store=store).stdout.split())
    assert said.startswith("1 job(s) cancelled. 2 job(s) not cancelled, as other experiments need them too:")
    assert f"train/base ({train[:12]}, also in y)" in said and f"{train[:12]}`." in said
    statuses = query_json("SELECT name, status FROM jobs ORDER BY name", store)
    assert statuses == [{"name": "aggregate/x", "status": "cancelled"}, {"name": "aggregate/y", "status": "pending"},
                        {"name": "certify/base", "status": "pending"}, {"name": "train/base", "status": "pending"}]
    assert run_smx("cancel", train[:12], store=store).stdout == "1 job(s) cancelled.\n"


def test_a_data_root_fixed_in_the_spec_reaches_the_job_that_failed_for_want_of_it(tmp_path: Path) -> None:
    from tests.test_data import write_idx_split

    broken, fixed = tmp_path / "broken", tmp_path / "fixed"
    # Compressed and cut short past its header: submit's check reads headers and labels, so only the job finds this.
    write_idx_split(broken, "train", 8, compress=True, seed=0)
    write_idx_split(broken, "t10k", 8, compress=False, seed=1)
    images = broken / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    write_idx_split(fixed, "train", 8, compress=False, seed=0)
    write_idx_split(fixed, "t10k", 8, compress=False, seed=1)
    spec = tmp_path / "moved.toml"
    store = StoreTarget.directory(tmp_path / "store")
    for root in (broken, fixed):
        spec.write_text(tiny_spec("moved", epochs=1, n=50, max_samples=2, method="gaussian")
                        .replace('dataset = "mnist-mini"', f'dataset = "fashion-mnist"\nroot = "{root}"'))
        assert run_smx("submit", str(spec), "--cpu-jobs", "1", store=store, check=False).returncode == 1
    runtime = query_json("SELECT status, json_extract(runtime, '$.data_root') AS root FROM jobs WHERE kind = 'train'",
                         store)
    assert runtime == [{"status": "failed", "root": str(fixed)}]
    run_smx("retry", "moved", store=store)
    worker = run_smx("worker", "--gpus", "none", store=store)
    assert "ran 3 job(s), 0 failed" in worker.stdout


def test_remove_asks_or_needs_yes_and_then_takes_the_experiment_out(tmp_path: Path) -> None:
    store = StoreTarget.directory(tmp_path / "store")
    for name, radius in (("first", 0.5), ("second", 0.75)):  # the same log would be one job for both
        log = tmp_path / f"{name}.tsv"
        log.write_text(f"idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t{radius}\t1\t0:00:01.000000\n")
        run_smx("import", str(log), "--name", name, "--method", "gaussian", "--sigma", "0.5", store=store)
    # Without a terminal to ask on, nothing is removed until --yes says so.
    refused = run_smx("remove", "first", store=store, check=False)
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert one_line(refused.stderr) == ("error: smx remove deletes first: 2 job(s), 1 certificate(s), 0 checkpoint(s); "
                                        "it asks first, and there is no terminal to ask on. Fix: add --yes to remove "
                                        "them.")
    unknown = run_smx("remove", "third", "--yes", store=store, check=False)
    assert unknown.returncode == 2 and "no experiment named 'third' in the store (known: first, second)" in \
        one_line(unknown.stderr)
    removed = run_smx("remove", "first", "--yes", store=store)
    assert removed.stdout == "removed first: 2 job(s), 1 certificate(s), 0 checkpoint(s).\n"
    assert query_json("SELECT name FROM experiments", store) == [{"name": "second"}]
    assert query_json("SELECT count(*) AS certified FROM certificates", store) == [{"certified": 1}]
    # The same log imported into another experiment is one job: removing one names it as kept for the other.
    run_smx("import", str(tmp_path / "second.tsv"), "--name", "third", "--method", "gaussian", "--sigma", "0.5",
            store=store)
    (certify_key,) = [row["key"] for row in query_json("SELECT key FROM jobs WHERE kind = 'certify'", store)]
    assert run_smx("remove", "second", "--yes", store=store).stdout == (
        "removed second: 1 job(s), 0 certificate(s), 0 checkpoint(s); 1 job(s) kept for other experiments.\n"
        f"  kept import/second ({certify_key[:12]}): in the plan of third\n")


def test_smx_version_and_status_of_one_experiment_with_every_job(tmp_path: Path) -> None:
    from smx import __version__

    assert run_cli("--version") == (0, f"smx {__version__}\n", "")
    code, out, err = run_cli("status", "quickstart", "--jobs", "--store", str(tmp_path / "store"))
    assert code == 2 and out == "" and not (tmp_path / "store").exists()
    assert "--jobs lists every job in the store, and 'quickstart' names one experiment." in " ".join(err.split())
