"""`smx import` and `smx export` end to end, with the authors' published 10,000-image MNIST logs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smx.db.store import open_store
from smx.plan import build_plan
from smx.scheduler.queue import enqueue
from smx.science.metrics import read_certification_log, summarize
from smx.spec import load_spec
from tests.conftest import REPO, SHARED, smx_command

FIXTURES = SHARED / "fixtures" / "cohen-format-logs"
GAUSSIAN = FIXTURES / "mnist_gaussian_sigma0.50.tsv"
SMOOTHMIX = FIXTURES / "mnist_smoothmix_eta1_sigma1.00.tsv"

pytestmark = pytest.mark.skipif(not (GAUSSIAN.is_file() and SMOOTHMIX.is_file()),
                                reason=f"the published certification logs are not in {FIXTURES}")

IMPORT_GAUSSIAN = ("import", str(GAUSSIAN), "--name", "cohen", "--method", "gaussian", "--sigma", "0.5",
                   "--note", "Cohen et al.'s MNIST model")
IMPORT_SMOOTHMIX = ("import", str(SMOOTHMIX), "--name", "cohen", "--method", "smoothmix", "--sigma", "1.0",
                    "--param", "eta=1", "--param", "noise_samples=4")
# Everything an import writes, counted.
COUNTS = ("SELECT (SELECT count(*) FROM experiments) AS experiments, (SELECT count(*) FROM jobs) AS jobs,"
          " (SELECT count(*) FROM experiment_jobs) AS members, (SELECT count(*) FROM job_parents) AS edges,"
          " (SELECT count(*) FROM certificates) AS certificates, (SELECT count(*) FROM aggregates) AS aggregates,"
          " (SELECT count(*) FROM certified_accuracy) AS accuracies, (SELECT count(*) FROM results) AS results")


def run_smx(*arguments: str, store: Path, check: bool = True) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SMX_STORE": str(store), "COLUMNS": "250"}
    result = subprocess.run(smx_command(*arguments), capture_output=True, text=True, env=environment, cwd=REPO,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"smx {' '.join(arguments)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def query_json(sql: str, store: Path) -> list[dict]:
    """Rows of a read-only query on the store's database, read here rather than through a slower `smx query`."""
    connection = sqlite3.connect(f"file:{store / 'smx.db'}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(sql)]
    finally:
        connection.close()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("imports") / "store"
    run_smx(*IMPORT_GAUSSIAN, store=store)
    run_smx(*IMPORT_SMOOTHMIX, store=store)
    return store


def test_imported_logs_are_results_with_the_acr_of_the_file(imported: Path) -> None:
    rows = {row["config"]: row for row in query_json(
        "SELECT config, method, sigma, hyperparams, acr, clean_accuracy, num_samples, acc_1_00 FROM results "
        "WHERE experiment = 'cohen'", imported)}
    assert set(rows) == {"mnist_gaussian_sigma0.50", "mnist_smoothmix_eta1_sigma1.00"}
    for path, published_acr in ((GAUSSIAN, 1.5596), (SMOOTHMIX, 1.7851)):
        log = read_certification_log(path)
        expected = summarize([row.radius for row in log], [row.correct for row in log],
                             [row.prediction for row in log])
        row = rows[path.stem]
        assert row["num_samples"] == 10_000
        assert row["acr"] == pytest.approx(expected.acr, abs=1e-12)
        assert round(row["acr"], 4) == published_acr
        assert row["clean_accuracy"] == pytest.approx(expected.clean_accuracy)
        assert row["acc_1_00"] == pytest.approx(expected.certified_accuracy[1.0])
    assert (rows["mnist_gaussian_sigma0.50"]["method"], rows["mnist_gaussian_sigma0.50"]["sigma"]) == ("gaussian", 0.5)
    assert json.loads(rows["mnist_smoothmix_eta1_sigma1.00"]["hyperparams"]) == {
        "train.smoothmix.eta": 1.0, "train.smoothmix.noise_samples": 4}


def test_an_import_records_its_provenance_and_leaves_what_a_certify_job_would(imported: Path) -> None:
    jobs = query_json("SELECT key, kind, status, config FROM jobs ORDER BY kind", imported)
    assert [(job["kind"], job["status"]) for job in jobs] == [("aggregate", "done")] * 2 + [("certify", "done")] * 2
    certify = next(json.loads(job["config"]) for job in jobs
                   if job["kind"] == "certify" and "gaussian" in json.loads(job["config"])["import"]["source"])
    assert certify["import"]["source"] == str(GAUSSIAN.resolve())
    assert certify["import"]["sha256"] == hashlib.sha256(GAUSSIAN.read_bytes()).hexdigest()
    assert certify["import"]["note"] == "Cohen et al.'s MNIST model"
    assert certify["import"]["imported_at"]
    assert certify["data"] == {"dataset": "mnist"} and certify["certify"] == {"sigma": 0.5}
    assert certify["train"] == {"method": "gaussian", "sigma": 0.5, "params": {}}
    nulls = query_json("SELECT count(*) AS n FROM certificates WHERE pa_lower IS NULL AND count IS NULL", imported)
    assert nulls == [{"n": 20_000}]
    # Nothing ran here: no start time, so no made-up elapsed time of zero.
    times = query_json("SELECT count(*) AS n FROM jobs WHERE started_at IS NULL AND finished_at IS NOT NULL", imported)
    assert times == [{"n": 4}]


def test_importing_the_same_file_again_changes_nothing(imported: Path) -> None:
    before = query_json(COUNTS, imported), query_json("SELECT key, finished_at FROM jobs ORDER BY key", imported)
    result = run_smx(*IMPORT_GAUSSIAN, store=imported)
    assert "already imported" in result.stdout and "--note" not in result.stdout  # the same note
    renoted = run_smx(*IMPORT_GAUSSIAN[:-1], "a new note", store=imported).stdout
    assert "--note was not stored: the import already there keeps its note \"Cohen et al.'s MNIST model\"." in renoted
    assert (query_json(COUNTS, imported), query_json("SELECT key, finished_at FROM jobs ORDER BY key", imported)) \
        == before


def test_an_import_says_which_hyperparameters_it_assumed(imported: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(imported, store)
    result = run_smx("import", str(SMOOTHMIX), "--name", "assumed", "--method", "smoothmix", "--sigma", "1.0",
                     "--param", "eta=1", store=store)
    assert "smoothmix defaults assumed for what --param did not state: alpha=1.0, steps=8, noise_samples=1," \
        in result.stdout
    assert "eta=" not in result.stdout.split("assumed")[1]
    assert "assumed" not in run_smx(*IMPORT_GAUSSIAN, store=store).stdout  # already imported: nothing to say


def test_an_import_warns_of_radii_no_certification_at_its_sigma_can_give(imported: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(imported, store)
    # The sigma = 1.0 log said to be certified at 0.5: its radii reach 3.81, past 7 * 0.5.
    result = run_smx("import", str(SMOOTHMIX), "--name", "mistyped", "--method", "smoothmix", "--sigma", "0.5",
                     store=store)
    assert "certifies a radius of 3.81, which no certification at sigma 0.5 can give" in result.stderr
    # Its fix: remove the experiment, then import the log again with the right sigma.
    assert "`smx remove mistyped` (the whole experiment) and import it again" in " ".join(result.stderr.split())
    run_smx("remove", "mistyped", "--yes", store=store)
    again = run_smx("import", str(SMOOTHMIX), "--name", "mistyped", "--method", "smoothmix", "--sigma", "1.0",
                    store=store)
    assert "warning" not in again.stderr and again.stdout.startswith("imported ")
    assert f"Store: {store}" in " ".join(again.stdout.split())
    right = run_smx("import", str(SMOOTHMIX), "--name", "right", "--method", "smoothmix", "--sigma", "1.0", store=store)
    assert "warning" not in right.stderr


def test_the_same_log_in_another_experiment_shares_its_certificates(imported: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(imported, store)
    run_smx("import", str(GAUSSIAN), "--name", "elsewhere", "--method", "gaussian", "--sigma", "0.5", store=store)
    counts = query_json(COUNTS, store)[0]
    assert (counts["experiments"], counts["certificates"], counts["results"]) == (2, 20_000, 3)


def test_export_writes_the_logs_back_byte_for_byte(imported: Path, tmp_path: Path) -> None:
    result = run_smx("export", "cohen", "--out", str(tmp_path / "out"), store=imported)
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert sorted(path.name for path in paths) == sorted([GAUSSIAN.name, SMOOTHMIX.name])
    for path in paths:
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes()
    default = run_smx("export", "cohen", store=imported).stdout.splitlines()
    assert Path(default[0]).parent == imported / "exports" / "cohen"
    assert not list((tmp_path / "out").glob(".*"))  # no partial files left beside the logs
    # A log of a config the experiment no longer has goes from the store's own folder, not from one the user chose.
    for folder in (imported / "exports" / "cohen", tmp_path / "out"):
        (folder / "dropped.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
        (folder / "notes.txt").write_text("mine")
    again = run_smx("export", "cohen", store=imported)
    assert f"removed {imported / 'exports' / 'cohen' / 'dropped.tsv'}: no config of cohen has that log now" in \
        " ".join(again.stderr.split())
    assert sorted(path.name for path in (imported / "exports" / "cohen").iterdir()) == sorted(
        [GAUSSIAN.name, SMOOTHMIX.name, "notes.txt"])
    kept = run_smx("export", "cohen", "--out", str(tmp_path / "out"), store=imported)
    assert "removed" not in kept.stderr and (tmp_path / "out" / "dropped.tsv").exists()
    (imported / "exports" / "cohen" / "notes.txt").unlink()  # the store is the module's


def test_an_export_that_could_not_finish_writes_nothing(imported: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / SMOOTHMIX.name).mkdir(parents=True)  # the second log's name, sorted, is taken by a directory
    blocked = run_smx("export", "cohen", "--out", str(out), store=imported, check=False)
    assert blocked.returncode == 2 and "a directory has that name" in blocked.stderr
    assert [path.name for path in out.iterdir()] == [SMOOTHMIX.name]
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    refused = run_smx("export", "cohen", "--out", str(a_file), store=imported, check=False)
    assert refused.returncode == 2 and "is a file, not a directory" in refused.stderr
    assert a_file.read_text() == "mine"


def test_report_compares_an_imported_log_with_the_paper(imported: Path) -> None:
    text = run_smx("report", "cohen", "--compare", "paper", store=imported).stdout
    lines = text.splitlines()
    gaussian = next(index for index, line in enumerate(lines) if "mnist_gaussian_sigma0.50" in line)
    assert lines[gaussian].split()[:4] == ["0.50", "mnist_gaussian_sigma0.50", "gaussian", "1.560"]
    assert lines[gaussian + 1].split()[:5] == ["paper", "(Table", "2)", "Gaussian", "1.553"]
    assert lines[gaussian + 2].split()[:4] == ["ours", "-", "paper", "+0.007"]
    smoothmix = next(index for index, line in enumerate(lines) if "mnist_smoothmix_eta1_sigma1.00" in line)
    assert "SmoothMix (eta=1)" in lines[smoothmix + 1] and "1.788" in lines[smoothmix + 1]
    assert lines[smoothmix + 2].split()[:4] == ["ours", "-", "paper", "-0.003"]
    assert "2 of 2 config(s) match a published setting" in text
    markdown = run_smx("report", "cohen", "--format", "md", store=imported).stdout
    assert "| 0.50 | mnist_gaussian_sigma0.50 | gaussian |  | **1.560** | 99.1 |" in markdown
    # 86.05% and 63.95% (8,605 and 6,395 of 10,000) are ties, rounded up both, whatever binary error says.
    assert "| 95.4 | 93.5 | 90.4 | 86.1 | 80.5 | 73.5 | 64.0 | 53.5 |" in markdown
    latex = run_smx("report", "cohen", "-f", "latex", "--compare", "paper", store=imported).stdout
    assert r"mnist\_gaussian\_sigma0.50" in latex and "$+0.007$" in latex


def test_a_malformed_log_exits_2_naming_file_and_line_and_writes_nothing(imported: Path, tmp_path: Path) -> None:
    lines = GAUSSIAN.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace("\t1\t0:", "\tyes\t0:")
    malformed = tmp_path / "malformed.tsv"
    malformed.write_text("".join(lines))
    before = query_json(COUNTS, imported), query_json("SELECT * FROM experiments", imported)
    result = run_smx("import", str(malformed), "--name", "cohen", "--method", "gaussian", "--sigma", "0.5",
                     "--config", "malformed", store=imported, check=False)
    assert result.returncode == 2, result.stderr
    assert f"{malformed}, line 5" in result.stderr and "Traceback" not in result.stderr
    assert (query_json(COUNTS, imported), query_json("SELECT * FROM experiments", imported)) == before
    nowhere = tmp_path / "nowhere"
    result = run_smx("import", str(malformed), "--name", "x", "--method", "gaussian", "--sigma", "0.5",
                     store=nowhere, check=False)
    assert result.returncode == 2 and not nowhere.exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (("--method", "smoothmixx", "--sigma", "0.5"), "use one of consistency, gaussian, macer, smoothadv, smoothmix"),
    (("--method", "gaussian", "--sigma", "0"), "--sigma must be a positive number"),
    (("--method", "gaussian", "--sigma", "0.5", "--dataset", "svhn"), "unknown --dataset 'svhn'"),
    (("--method", "smoothmix", "--sigma", "0.5", "--param", "etta=2"), "smoothmix has no such hyperparameter"),
    (("--method", "smoothmix", "--sigma", "0.5", "--param", "mix_step=3"), "mix_step"),
    (("--method", "gaussian", "--sigma", "0.5", "--name", "bad name"), "is not a safe name"),
    (("--method", "gaussian", "--sigma", "0.5", "--config", "bad name"), "is not a safe config name"),
    # Keys hash the stated values as JSON, which has no infinity.
    (("--method", "smoothmix", "--sigma", "0.5", "--param", "eta=inf"), "eta: Input should be a finite number"),
    (("--method", "smoothmix", "--sigma", "0.5", "--param", "max_norm=1e400"), "max_norm: Input should be a finite"),
    (("--method", "smoothmix", "--sigma", "0.5", "--param", "eta=1", "--param", "eta=2"), "--param eta is given twice"),
])
def test_bad_import_options_exit_2(imported: Path, arguments: tuple[str, ...], message: str) -> None:
    name = () if "--name" in arguments else ("--name", "cohen2")
    result = run_smx("import", str(GAUSSIAN), *name, *arguments, store=imported, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_log_named_as_smx_names_swept_configs_imports_under_that_name(imported: Path, tmp_path: Path) -> None:
    exported = tmp_path / "gaussian-sigma=0.5.tsv"  # what `smx export` writes for a swept config
    shutil.copyfile(GAUSSIAN, exported)
    run_smx("import", str(exported), "--name", "swept", "--method", "gaussian", "--sigma", "0.5", store=imported)
    assert query_json("SELECT config FROM results WHERE experiment = 'swept'", imported) == [
        {"config": "gaussian-sigma=0.5"}]
    spaced = tmp_path / "my run.tsv"
    shutil.copyfile(GAUSSIAN, spaced)
    refused = run_smx("import", str(spaced), "--name", "swept", "--method", "gaussian", "--sigma", "0.5",
                      store=imported, check=False)
    assert refused.returncode == 2 and "or name it with --config NAME" in " ".join(refused.stderr.split())


def test_import_errors_for_missing_files_clashing_configs_and_spec_experiments(imported: Path, tmp_path: Path) -> None:
    missing = run_smx("import", str(tmp_path / "missing.tsv"), "--name", "cohen", "--method", "gaussian",
                      "--sigma", "0.5", store=imported, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    stdin = run_smx("import", "-", "--name", "cohen", "--method", "gaussian", "--sigma", "0.5", store=imported,
                    check=False)
    assert stdin.returncode == 2 and " ".join(stdin.stderr.split()) == (
        "error: smx import reads a log from a file, not from standard input. Fix: save the log to a file and give its "
        "path.")
    folder = run_smx("import", str(tmp_path), "--name", "cohen", "--method", "gaussian", "--sigma", "0.5",
                     store=imported, check=False)
    assert folder.returncode == 2 and f"{tmp_path} is a directory" in folder.stderr
    cifar_log = tmp_path / "cifar.tsv"
    cifar_log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t12\t12\t0.5\t1\t0:00:01.000000\n")
    wrong_dataset = run_smx("import", str(cifar_log), "--name", "cohen", "--method", "gaussian", "--sigma", "0.5",
                            store=imported, check=False)
    assert wrong_dataset.returncode == 2
    assert "line 2: label 12, predict 12: mnist has classes 0 to 9" in wrong_dataset.stderr
    imagenet_log = tmp_path / "imagenet.tsv"
    imagenet_log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                            "0\t3\t3\t0.5\t1\t0:00:01.000000\n12500\t7\t7\t0.5\t1\t0:00:01.000000\n")
    past_the_test_set = run_smx("import", str(imagenet_log), "--name", "cohen", "--method", "gaussian", "--sigma",
                                "0.5", store=imported, check=False)
    assert past_the_test_set.returncode == 2
    assert "line 3: sample 12500: mnist's test set has 10,000 images (idx 0 to 9999)" in past_the_test_set.stderr
    # A log of the training split (certify.split = "train", as `smx export` writes it) is one with --split train,
    # and its comparison with the paper says so.
    train_split = run_smx("import", str(imagenet_log), "--name", "train_split", "--method", "gaussian", "--sigma",
                          "0.5", "--split", "train", store=imported, check=False)
    assert train_split.returncode == 0, train_split.stderr
    compared = run_smx("report", "train_split", "--compare", "paper", store=imported)
    assert "the train split" in " ".join(compared.stderr.split())
    unknown = run_smx("import", str(imagenet_log), "--name", "cohen", "--method", "gaussian", "--sigma", "0.5",
                      "--split", "val", store=imported, check=False)
    assert unknown.returncode == 2 and "unknown --split 'val'" in unknown.stderr
    clash = run_smx("import", str(GAUSSIAN), "--name", "cohen", "--method", "gaussian", "--sigma", "0.25",
                    store=imported, check=False)
    assert clash.returncode == 2 and "already has a config named 'mnist_gaussian_sigma0.50'" in clash.stderr
    store = tmp_path / "store"
    spec = REPO / "experiments" / "quickstart.toml"
    enqueue(open_store(str(store)), build_plan(load_spec(spec)), spec)
    mixed = run_smx("import", str(GAUSSIAN), "--name", "quickstart", "--method", "gaussian", "--sigma", "0.5",
                    store=store, check=False)
    assert mixed.returncode == 2 and "was made by `smx submit`" in mixed.stderr


def test_report_import_and_export_do_not_import_torch(imported: Path, tmp_path: Path) -> None:
    probe = textwrap.dedent("""
        import sys
        from smx.cli import main
        sys.argv = ["smx", *sys.argv[1:]]
        try:
            main()
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "torch" not in sys.modules, "torch was imported"
    """)
    store = tmp_path / "store"
    shutil.copytree(imported, store)
    for arguments in (["import", str(GAUSSIAN), "--name", "probe", "--method", "gaussian", "--sigma", "0.5"],
                      ["report", "cohen", "--compare", "paper", "--format", "latex"],
                      ["export", "cohen", "--out", str(tmp_path / "out")]):
        result = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True,
                                env={**os.environ, "SMX_STORE": str(store)}, cwd=REPO)
        assert result.returncode == 0, result.stderr


def test_the_tui_shows_the_published_acr_beside_an_imported_log(imported: Path) -> None:
    from smx.reference import PaperAcr, PaperAcrValue
    from smx.tui.data import StoreReader
    from smx.tui.model import LoadRequest

    reader = StoreReader(str(imported), published_acr=PaperAcr(str(imported)))
    snapshot = reader.load(LoadRequest(experiment="cohen", results=True))
    results = snapshot.results
    published = dict(zip((row[results.columns.index("config")] for row in results.rows),
                         (row[results.columns.index("published_acr")] for row in results.rows)))
    # The published logs certified the whole test set as the paper did: a comparison that is not only indicative.
    assert published["mnist_gaussian_sigma0.50"] == PaperAcrValue(1.553, indicative=False)
