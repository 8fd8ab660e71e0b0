"""`smx report` and the published numbers: matching a result to the paper's setting, and the table in its layout."""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import replace

import pytest

from smx.db.models import Aggregate
from smx.db.queries import certificate_outcomes, certification_log_rows
from smx.db.readonly import QueryResult
from smx.db.store import Store
from smx.errors import UserError
from smx.plan import build_plan
from smx.reference import (PaperAcr, PaperAcrValue, Setting, find_published, max_certifiable_radius, published_rows,
                           training_differences)
from smx.report import (Curve, certified_accuracy_figure, experiment_report, experiment_results, format_cell, pyplot,
                        render_report, to_csv, to_json, to_markdown)
from smx.scheduler.queue import enqueue
from smx.science.metrics import LogRow, Outcomes
from smx.spec import parse_spec
from smx.tasks.aggregate import aggregate_radii, summarise_config
from smx.tui.cells import results_caption
from smx.tui.data import load_results

SPEC = textwrap.dedent("""
    [experiment]
    name = "paper"

    [data]
    dataset = "mnist"

    [train]
    sigma = 0.5

    [train.smoothmix]
    noise_samples = 4
    steps = 4

    [[variant]]
    name = "gaussian-sigma0.5"
    train.method = "gaussian"

    [[variant]]
    name = "smoothmix-eta5-onestep-sigma0.5"
    train.method = "smoothmix"
    train.smoothmix = { eta = 5.0, mix_step = 1 }

    [[variant]]
    name = "smoothmix-eta1-sigma0.5"
    train.method = "smoothmix"
    train.smoothmix = { eta = 1.0 }

    [[variant]]
    name = "gaussian-sigma0.25"
    train.method = "gaussian"
    train.sigma = 0.25

    [[variant]]
    name = "gaussian-mini"
    train.method = "gaussian"
    data.dataset = "mnist-mini"
""")

# (radius, correct) of each certified sample; an abstention has radius 0 and is not correct.
SAMPLES = {
    "gaussian-sigma0.5": [(2.0, 1), (1.0, 1), (0.5, 1), (0.0, 0)],  # ACR 0.875
    "smoothmix-eta5-onestep-sigma0.5": [(1.5, 1), (1.5, 1), (1.0, 1), (0.3, 0)],  # ACR 1.0: the best at 0.5
    "smoothmix-eta1-sigma0.5": [(1.2, 1), (1.0, 1), (0.2, 1), (0.0, 0)],  # ACR 0.6
    "gaussian-sigma0.25": [(0.9, 1), (0.6, 1), (0.4, 1), (0.1, 1)],  # ACR 0.5
    "gaussian-mini": [(1.0, 1), (1.0, 1), (0.0, 0), (0.0, 0)],  # ACR 0.5
}


def seed(store: Store, spec_text: str, certified: dict[str, list[tuple[float, int]]] = SAMPLES) -> Store:
    """The spec's experiment as `smx submit` records it, with summaries of made-up certificates (`certified`: each
    config's samples)."""
    plan = build_plan(parse_spec(spec_text))
    enqueue(store, plan, store.root / "paper.toml")
    aggregate = next(job for job in plan.jobs if job.kind == "aggregate")
    with store.session() as session:
        for entry in aggregate.inputs["configs"]:
            samples = [LogRow(index, 0, 0 if correct else -1, radius, correct, 0.1)
                       for index, (radius, correct) in enumerate(certified[entry["name"]])]
            session.add(summarise_config(aggregate.key, plan.experiment, entry, Outcomes.of_rows(samples),
                                         aggregate_radii(aggregate.inputs["radii"])))
    return store


@pytest.fixture
def seeded(store: Store) -> Store:
    return seed(store, SPEC)


def seed_with(store: Store, variants: str, certified_as: dict[str, str]) -> Store:
    """SPEC's experiment with more [[variant]] tables, each new config certified as the SPEC config named for it."""
    samples = {**SAMPLES, **{name: SAMPLES[twin] for name, twin in certified_as.items()}}
    return seed(store, SPEC + textwrap.dedent(variants), samples)


def test_text_report_has_one_row_per_config_grouped_by_sigma_in_the_papers_order(seeded: Store) -> None:
    text = render_report(experiment_report(seeded, "paper"), "text")
    lines = text.splitlines()
    assert lines[0] == "paper: ACR and certified accuracy (%) at radius r"
    header = lines[1].split()
    # Up to 4 sigma_max = 2.0, where the sigma = 0.5 Gaussian still certifies a sample.
    assert header[:5] == ["sigma", "config", "method", "hyperparameters", "ACR"]
    assert header[5:] == ["0.00", "0.25", "0.50", "0.75", "1.00", "1.25", "1.50", "1.75", "2.00"]
    configs = [line.split()[1] if line.startswith("0.") else line.split()[0] for line in lines[2:]
               if line and not line.startswith("-")]
    assert configs == ["gaussian-sigma0.25", "gaussian-mini", "gaussian-sigma0.5", "smoothmix-eta1-sigma0.5",
                       "smoothmix-eta5-onestep-sigma0.5"]
    # sigma is written once per group, on its first row
    assert [line[:6] for line in lines if "gaussian-" in line] == ["0.25  ", "0.50  ", "      "]
    gaussian = next(line for line in lines if "gaussian-sigma0.5" in line).split()
    assert gaussian[-10:] == ["0.875", "75.0", "75.0", "75.0", "50.0", "50.0", "25.0", "25.0", "25.0", "25.0"]
    onestep = next(line for line in lines if "smoothmix-eta5-onestep" in line)
    # eta and mix_step always name a SmoothMix row; steps and noise_samples are the same in both rows.
    assert "eta=5, mix_step=1" in onestep and "steps" not in onestep
    assert "eta=1, mix_step=0" in next(line for line in lines if "smoothmix-eta1" in line)
    assert "paper (" not in text


def test_the_specs_own_report_radii_get_columns_too(store: Store) -> None:
    seed(store, SPEC.replace('name = "paper"', 'name = "paper"\n\n[report]\nradii = [0.1, 0.33]', 1))
    lines = render_report(experiment_report(store, "paper"), "text").splitlines()
    assert lines[1].split()[5:9] == ["0.00", "0.10", "0.25", "0.33"]
    gaussian = next(line for line in lines if "gaussian-sigma0.25" in line).split()
    # Radii 0.9, 0.6, 0.4 and 0.1: all four certified at r = 0.1, three at 0.25 and 0.33.
    assert gaussian[3:8] == ["0.500", "100.0", "100.0", "75.0", "75.0"]
    # `smx query -e` and the TUI's results tab: the results view's columns, and these in their place by radius.
    results = experiment_results(store, "paper")
    radius_columns = [column for column in results.columns if column.startswith("acc_")]
    assert radius_columns[:5] == ["acc_0_00", "acc_0_10", "acc_0_25", "acc_0_33", "acc_0_50"]
    assert len(radius_columns) == 19 and results.columns[-1] == "certify_key"
    row = next(dict(zip(results.columns, row)) for row in results.rows if row[1] == "gaussian-sigma0.25")
    assert [row[column] for column in radius_columns[:5]] == [1.0, 1.0, 0.75, 0.75, 0.5]


def test_a_config_certified_at_another_sigma_than_it_trained_at_says_so(store: Store) -> None:
    seed(store, SPEC.replace('name = "gaussian-sigma0.25"\ntrain.method = "gaussian"\ntrain.sigma = 0.25',
                             'name = "gaussian-sigma0.25"\ntrain.method = "gaussian"\ntrain.sigma = 0.25\n'
                             'certify.sigma = 0.5'))
    rows = {row.config: row for row in experiment_report(store, "paper").rows}
    assert rows["gaussian-sigma0.25"].sigma == 0.25
    assert rows["gaussian-sigma0.25"].hyperparameters == "certify sigma=0.5"
    assert rows["gaussian-sigma0.5"].hyperparameters == ""


def test_radii_the_same_to_six_decimals_are_one_column_headed_with_the_decimals_it_needs(store: Store) -> None:
    # 0.2500000001 would otherwise be a second row of the primary key (aggregate, radius 0.25, the grid's); a spec
    # that lists two such radii itself is refused (test_spec).
    seed(store, SPEC.replace('name = "paper"', 'name = "paper"\n\n[report]\nradii = [0.1, 0.125, 0.2500000001]', 1))
    lines = render_report(experiment_report(store, "paper"), "text").splitlines()
    assert lines[1].split()[5:9] == ["0.00", "0.10", "0.125", "0.25"]
    assert aggregate_radii([0.1, 0.1000000001, 0.2500000001])[:3] == [0.0, 0.1, 0.25]


def test_markdown_and_latex_bold_the_best_acr_of_each_sigma(seeded: Store) -> None:
    report = experiment_report(seeded, "paper")
    markdown = render_report(report, "md")
    lines = markdown.splitlines()
    assert lines[0].startswith("| σ | config | method | hyperparameters | ACR | 0.00 |")
    assert lines[1] == "|---|---|---|---|" + "---:|" * 10
    bold = [line for line in lines if "**" in line]
    assert len(bold) == 2
    assert "gaussian-sigma0.25" in bold[0] and "**0.500**" in bold[0]
    assert "smoothmix-eta5-onestep-sigma0.5" in bold[1] and "**1.000**" in bold[1]
    latex = render_report(report, "latex")
    assert latex.startswith(r"\begin{tabular}{llllrrrrrrrrrr}")
    assert latex.rstrip().endswith(r"\end{tabular}")
    assert r"$\sigma$ & config & method & hyperparameters & ACR & 0.00" in latex
    assert r"\textbf{1.000}" in latex and r"\textbf{0.500}" in latex and latex.count(r"\textbf") == 2
    assert r"eta=5, mix\_step=1" in latex
    assert latex.count(r"\hline") == 4  # top, after the header, between the two sigmas, bottom


def test_training_differences_name_the_architecture_and_schedule_and_only_what_is_known() -> None:
    short_resnet20 = Setting("cifar10", "gaussian", 0.25, 0.25, {}, arch="cifar_resnet20",
                             schedule={"epochs": 10, "lr": 0.1, "lr_step": 50})
    assert training_differences(short_resnet20, find_published(short_resnet20)) == [
        "cifar_resnet20 (paper: cifar_resnet110)", "epochs = 10"]
    # An imported log knows neither architecture nor schedule, and only the hyperparameters it was given.
    imported = Setting("mnist", "macer", 0.25, 0.25, {"lbd": 16.0, "noise_samples": 16, "beta": 16.0, "gamma": 8.0})
    assert training_differences(imported, find_published(imported)) == []
    not_deferred = Setting("mnist", "macer", 0.25, 0.25, {**imported.params, "deferred_epochs": 0})
    assert training_differences(not_deferred, find_published(not_deferred)) == ["deferred_epochs = 0"]



def test_training_differences_hold_a_row_to_its_own_recipe_and_name_its_caveat() -> None:
    # Table 3's MACER* and SmoothAdv* rows are the authors' released models, trained with their own recipes.
    macer_params = {"noise_samples": 16, "beta": 16.0, "gamma": 8.0, "lbd": 12.0, "deferred_epochs": 0}
    cifar = {"epochs": 150, "batch_size": 256, "lr": 0.1, "lr_step": 50, "weight_decay": 1e-4}
    port = Setting("cifar10", "macer", 0.5, 0.5, macer_params, arch="cifar_resnet110", schedule=cifar,
                   lr_decay="one_epoch_late")
    row = find_published(port)
    assert row is not None and row.table == "Table 3" and row.acr == 0.691
    caveat = ("the paper's MACER* model has no normalization layer, and its learning rate fell at epochs 199 and 399 "
              "(from 0), not 200 and 400")
    assert training_differences(port, row) == [
        "lr = 0.1", "epochs = 150", "lr_step = 50", "batch_size = 256", "weight_decay = 0.0001",
        "lr_decay = one_epoch_late", caveat]
    original = Setting("cifar10", "macer", 0.5, 0.5, macer_params, arch="cifar_resnet110", lr_decay="on_time",
                       schedule={"epochs": 440, "batch_size": 64, "lr": 0.01, "lr_step": 200, "weight_decay": 5e-4})
    assert training_differences(original, row) == [caveat]
    smoothadv_params = {"epsilon": 0.99609375, "steps": 10, "noise_samples": 8, "warmup": 10}
    late = Setting("cifar10", "smoothadv", 0.25, 0.25, smoothadv_params, arch="cifar_resnet110", schedule=cifar,
                   lr_decay="one_epoch_late")
    assert training_differences(late, find_published(late)) == ["lr_decay = one_epoch_late"]
    assert training_differences(replace(late, lr_decay="on_time"), find_published(late)) == []
    # Table 2's runs are the jh-jeong repositories', whose decays land one epoch late, as smx's default does.
    mnist = Setting("mnist", "gaussian", 0.5, 0.5, {}, arch="lenet", lr_decay="one_epoch_late")
    assert training_differences(mnist, find_published(mnist)) == []
    assert training_differences(replace(mnist, lr_decay="on_time"), find_published(mnist)) == ["lr_decay = on_time"]


def test_compare_says_where_a_config_was_trained_otherwise_than_the_paper(store: Store) -> None:
    # The paper's SmoothAdv warms its radius up over 10 epochs, and trains for the MNIST recipe's 90.
    seed_with(store, """
        [[variant]]
        name = "smoothadv-short"
        train.method = "smoothadv"
        train.epochs = 10
        train.smoothadv = { epsilon = 0.99609375, steps = 10, noise_samples = 4 }

        [[variant]]
        name = "smoothadv-recipe"
        train.method = "smoothadv"
        train.smoothadv = { epsilon = 0.99609375, steps = 10, noise_samples = 4, warmup = 10 }
    """, {"smoothadv-short": "gaussian-sigma0.5", "smoothadv-recipe": "gaussian-sigma0.5"})
    report = experiment_report(store, "paper", compare_with_paper=True)
    rows = {row.config: row for row in report.rows}
    assert rows["smoothadv-short"].published.label == rows["smoothadv-recipe"].published.label == "SmoothAdv"
    assert rows["smoothadv-short"].protocol_difference == "epochs = 10, warmup = 1, 4 images"
    assert rows["smoothadv-recipe"].protocol_difference == "4 images"
    assert "smoothadv-short (epochs = 10, warmup = 1, 4 images)" in report.protocol_note


def test_compare_adds_the_published_row_and_the_difference(seeded: Store) -> None:
    report = experiment_report(seeded, "paper", compare_with_paper=True)
    published = {row.config: row.published for row in report.rows}
    assert published["gaussian-sigma0.5"].label == "Gaussian" and published["gaussian-sigma0.5"].acr == 1.553
    assert published["smoothmix-eta5-onestep-sigma0.5"].label == "SmoothMix (eta=5) + one-step adversary"
    assert published["smoothmix-eta1-sigma0.5"].acr == 1.678
    assert published["gaussian-sigma0.25"].acr == 0.911
    assert published["gaussian-mini"] is None  # the paper has no mnist-mini
    text = render_report(report, "text")
    lines = text.splitlines()
    position = next(index for index, line in enumerate(lines) if "gaussian-sigma0.5" in line)
    assert lines[position + 1].split()[:5] == ["paper", "(Table", "2)", "Gaussian", "1.553"]
    difference = lines[position + 2].split()
    assert difference[:4] == ["ours", "-", "paper", f"{0.875 - 1.553:+.3f}"]
    assert difference[4] == f"{75.0 - 99.2:+.1f}"
    assert text.rstrip().endswith("4 of 5 config(s) match a published setting of SmoothMix "
                                  "(Jeong et al., NeurIPS 2021); differences are ours - paper.")
    assert report.protocol_note == (
        "trained or certified otherwise than the paper (the architecture of its table, the training recipe of its run; "
        "10,000 test images, n = 100,000, alpha = 0.001), so ours - paper is only indicative: gaussian-sigma0.25 "
        "(4 images); gaussian-sigma0.5 (4 images); smoothmix-eta1-sigma0.5 (4 images); smoothmix-eta5-onestep-sigma0.5 "
        "(4 images).")
    assert experiment_report(seeded, "paper").protocol_note is None  # nothing compared
    markdown = render_report(report, "md")
    assert "| paper (Table 2) | SmoothMix (eta=5) + one-step adversary |  | 1.685 |" in markdown
    assert "| ours - paper |  |  | -0.685 |" in markdown
    latex = render_report(report, "latex")
    assert r"ours - paper &  &  & $-0.678$" in latex  # eta = 1: 0.600 - 1.678


def test_a_comparison_names_the_certification_settings_that_differ_from_the_papers(store: Store) -> None:
    seed(store, SPEC + "\n[certify]\nn0 = 100\nn = 1000\nalpha = 0.01\n")
    note = experiment_report(store, "paper", compare_with_paper=True).protocol_note
    assert note is not None and "gaussian-sigma0.5 (4 images, n = 1,000, alpha = 0.01);" in note


def test_until_its_aggregate_is_done_an_experiment_reports_and_plots_the_configs_certified_so_far(
        store: Store, tmp_path) -> None:
    from sqlalchemy import update

    from smx.db.models import Certificate, Job
    from smx.report import plot_experiment

    plan = build_plan(parse_spec(SPEC))
    enqueue(store, plan, store.root / "paper.toml")
    certified, *waiting = next(job for job in plan.jobs if job.kind == "aggregate").inputs["configs"]
    with store.session() as session:
        session.execute(update(Job).where(Job.key == certified["certify_key"]).values(status="done"))
        session.add_all(Certificate(job_key=certified["certify_key"], sample_index=index, label=0,
                                    prediction=0 if correct else -1, radius=radius, correct=correct, seconds=0.1)
                        for index, (radius, correct) in enumerate(SAMPLES[certified["name"]]))
    report = experiment_report(store, "paper")
    assert [(row.config, row.acr) for row in report.rows] == [
        (certified["name"], pytest.approx(sum(radius * correct for radius, correct in SAMPLES[certified["name"]]) / 4))]
    # Read as the aggregate job reads them, the certificates give the same columns to the bit: the same summary.
    with store.read_session() as session:
        read_fast = certificate_outcomes(session, certified["certify_key"])
        read_as_rows = Outcomes.of_rows(certification_log_rows(session, certified["certify_key"]))
    for fast, rows in zip(vars(read_fast).values(), vars(read_as_rows).values()):
        assert fast.dtype == rows.dtype and fast.tobytes() == rows.tobytes()
    assert report.provisional == (
        "provisional: paper's aggregate job is not done; 1 of 5 config(s) certified so far, not yet "
        + ", ".join(f"{entry['name']} (pending)" for entry in waiting) + ".")
    markdown, latex = render_report(report, "md"), render_report(report, "latex")  # saved tables say so too
    assert markdown.endswith(f"\n\n*{report.provisional.replace('_', chr(92) + '_')}*\n")
    assert latex.endswith(f"\\end{{tabular}}\n% {report.provisional}\n")
    assert report.provisional not in render_report(report, "text")  # the terminal gets it on stderr
    path, provisional = plot_experiment(store, "paper", tmp_path / "paper.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and provisional == report.provisional
    results = experiment_results(store, "paper")  # `smx query -e` and the TUI's results tab
    assert results.provisional == report.provisional and len(results.rows) == 1
    row = dict(zip(results.columns, results.rows[0]))
    assert (row["config"], row["acr"], row["num_samples"]) == (certified["name"], report.rows[0].acr, 4)
    assert row["acc_0_00"] == row["clean_accuracy"] == sum(correct for _, correct in SAMPLES[certified["name"]]) / 4
    assert row["acc_4_00"] == 0.0
    assert results.columns[-1] == "certify_key" and row["certify_key"] == certified["certify_key"]
    table = load_results(store, "paper")
    assert table.provisional == report.provisional and [row[0] for row in table.rows] == [certified["name"]]
    assert results_caption(table) == f"{report.provisional} @r: certified accuracy at radius r"

    # The TUI asks every second: a cache keeps each summary until its certify job runs again.
    cache: dict = {}
    assert load_results(store, "paper", summary_cache=cache).rows == table.rows and len(cache) == 1
    with store.session() as session:
        session.execute(update(Certificate).where(Certificate.job_key == certified["certify_key"]).values(radius=0.0))
    assert load_results(store, "paper", summary_cache=cache).rows == table.rows  # the job has not run again
    with store.session() as session:
        session.execute(update(Job).where(Job.key == certified["certify_key"]).values(attempts=2))
    rerun = load_results(store, "paper", summary_cache=cache)
    assert dict(zip(rerun.columns, rerun.rows[0]))["acr"] == 0.0


def test_the_aggregate_job_writes_each_configs_log_and_removes_those_of_dropped_configs(store: Store) -> None:
    from sqlalchemy import delete

    from smx.db.models import Certificate, ExperimentJob, Job
    from smx.tasks import aggregate as aggregate_task

    plan = build_plan(parse_spec(SPEC))
    enqueue(store, plan, store.root / "paper.toml")
    aggregate = next(job for job in plan.jobs if job.kind == "aggregate")
    with store.session() as session:
        for entry in aggregate.inputs["configs"]:
            session.add_all(Certificate(job_key=entry["certify_key"], sample_index=index, label=0,
                                        prediction=0 if correct else -1, radius=radius, correct=correct, seconds=0.1)
                            for index, (radius, correct) in enumerate(SAMPLES[entry["name"]]))
    results = store.root / "results" / "paper"
    results.mkdir(parents=True)
    (results / "gaussian-sigma0.75.tsv").write_text("a config an earlier version of the spec had\n")
    with store.read_session() as session:
        job = session.get(Job, aggregate.key)
    aggregate_task.run(store, job, "cpu", lambda fraction, text: None)
    assert sorted(path.name for path in results.iterdir()) == sorted(f"{name}.tsv" for name in SAMPLES)
    assert (results / "gaussian-sigma0.5.tsv").read_text().splitlines()[1].startswith("0\t0\t0\t2.0\t1\t")
    # Once an edited spec's plan no longer has it, the job (retried, or finishing late) leaves the folder alone.
    with store.session() as session:
        session.execute(delete(ExperimentJob).where(ExperimentJob.job_key == aggregate.key))
    (results / "gaussian-sigma0.5.tsv").unlink()
    (results / "gaussian-sigma0.75.tsv").write_text("a config of the spec as it is now\n")
    aggregate_task.run(store, job, "cpu", lambda fraction, text: None)
    assert sorted(path.name for path in results.iterdir()) == sorted(
        [f"{name}.tsv" for name in SAMPLES if name != "gaussian-sigma0.5"] + ["gaussian-sigma0.75.tsv"])


def test_report_of_an_unknown_or_empty_experiment_says_so(store: Store) -> None:
    from smx.errors import UserError

    with pytest.raises(UserError, match=r"no experiment named 'nope' in the store \(known: none yet\).\nFix: check"):
        experiment_report(store, "nope")
    enqueue(store, build_plan(parse_spec(SPEC)), store.root / "paper.toml")
    with pytest.raises(UserError, match=r"has no results yet \(its jobs: 11 pending\).\nFix: run its jobs"):
        experiment_report(store, "paper")


def test_published_rows_hold_every_table_and_ablation() -> None:
    rows = published_rows()
    tables = {}
    for row in rows:
        tables[row.table] = tables.get(row.table, 0) + 1
    assert tables == {"Table 2": 27, "Table 3": 14, "Ablation: eta": 5, "Ablation: (alpha, T)": 4,
                      "Ablation: noise samples m": 4, "Ablation: L2 bound on the search": 5}
    gaussian = next(row for row in rows if row.table == "Table 2" and row.sigma == 1.0 and row.method == "gaussian")
    assert gaussian.acr == 1.620 and gaussian.certified_accuracy[0] == pytest.approx(0.963)
    assert len(gaussian.certified_accuracy) == 12  # r = 0.00 ... 2.75


def smoothmix(sigma: float = 1.0, dataset: str = "mnist", **params: object) -> Setting:
    base = {"eta": 1.0, "alpha": 1.0, "steps": 8, "noise_samples": 4, "mix_step": 0, "max_norm": None, "warmup": 10}
    return Setting(dataset=dataset, method="smoothmix", sigma=sigma, certify_sigma=sigma, params={**base, **params})


def test_a_setting_matches_only_the_published_row_of_the_same_dataset_method_sigma_and_key_parameters() -> None:
    assert find_published(smoothmix()).table == "Table 2"  # also an ablation's base: Table 2 comes first
    assert find_published(smoothmix()).acr == 1.788
    assert find_published(smoothmix(mix_step=1)).label == "SmoothMix (eta=1) + one-step adversary"
    assert find_published(smoothmix(eta=2.0)).table == "Ablation: eta"
    assert find_published(smoothmix(eta=2.0)).acr == 1.810
    assert (find_published(smoothmix()).origin, find_published(smoothmix(eta=2.0)).origin) == ("paper",
                                                                                              "authors' logs")
    assert find_published(smoothmix(alpha=2.0, steps=4)).label == "SmoothMix (alpha=2, T=4)"
    assert find_published(smoothmix(noise_samples=1)).acr == 1.744
    assert find_published(smoothmix(max_norm=6.0)).acr == 1.778
    assert find_published(smoothmix(steps=4)) is None  # T = 4 at sigma 1.0 is in no table
    assert find_published(smoothmix(dataset="mnist-mini")) is None
    assert find_published(smoothmix(dataset="fashion-mnist")) is None
    assert find_published(smoothmix(sigma=0.5, steps=4, eta=5.0)).acr == 1.694
    certified_elsewhere = Setting("mnist", "gaussian", sigma=0.5, certify_sigma=0.25, params={})
    assert find_published(certified_elsewhere) is None
    # An imported log states some hyperparameters; the method's defaults fill in the rest (Gaussian: m = 1).
    assert find_published(Setting("mnist", "gaussian", sigma=0.5, certify_sigma=0.5, params={})).acr == 1.553
    cifar = Setting("cifar10", "smoothmix", sigma=0.25, certify_sigma=0.25,
                    params={"eta": 5.0, "alpha": 0.5, "steps": 4, "noise_samples": 2, "mix_step": 1})
    assert find_published(cifar).label == "SmoothMix + one-step adversary"


def test_a_baseline_matches_its_published_row_only_with_the_hyperparameters_the_paper_ran() -> None:
    def baseline(method: str, sigma: float = 1.0, dataset: str = "mnist", **params: object) -> Setting:
        return Setting(dataset=dataset, method=method, sigma=sigma, certify_sigma=sigma, params=params)

    paper_smoothadv = {"epsilon": 0.99609375, "steps": 10, "noise_samples": 4}
    assert find_published(baseline("smoothadv", **paper_smoothadv)).acr == 1.779
    assert find_published(baseline("smoothadv")) is None  # the defaults: epsilon 0.25, m = 1
    assert find_published(baseline("smoothadv", dataset="cifar10", sigma=0.5, **{**paper_smoothadv,
                                                                               "noise_samples": 8})).acr == 0.684
    assert find_published(baseline("macer", lbd=6.0)).acr == 1.598
    assert find_published(baseline("macer", lbd=16.0)) is None  # sigma 1.0 ran lbd = 6
    assert find_published(baseline("macer", sigma=0.5)).acr == 1.594  # the defaults are the paper's there
    assert find_published(baseline("consistency", sigma=0.25)).acr == 0.928
    assert find_published(baseline("consistency", lbd=10.0)) is None  # sigma 1.0 ran lbd = 5
    assert find_published(baseline("consistency", lbd=5.0, adversarial=True)) is None
    assert find_published(baseline("stability", lbd=1.0)) is None


def test_published_accuracy_past_the_printed_columns_is_zero_only_where_certify_cannot_reach() -> None:
    assert max_certifiable_radius(1.0, 100_000, 0.001) == pytest.approx(3.81, abs=0.01)
    gaussian_quarter = next(row for row in published_rows() if row.sigma == 0.25 and row.method == "gaussian")
    assert gaussian_quarter.accuracy_at(0.75) == pytest.approx(0.933)
    assert gaussian_quarter.accuracy_at(1.0) == 0.0  # 1.0 > 3.81 * 0.25: the paper prints 0.0
    assert gaussian_quarter.accuracy_at(0.3) is None  # not a column of the paper
    sigma_one = find_published(smoothmix())
    assert sigma_one.accuracy_at(2.75) == pytest.approx(0.141)
    assert sigma_one.accuracy_at(3.0) is None  # certifiable, but not printed
    assert sigma_one.accuracy_at(4.0) == 0.0
    assert find_published(smoothmix(eta=2.0)).accuracy_at(0.0) is None  # ablations publish the ACR only


@pytest.mark.parametrize(
    "value, shown",
    [(1.55955, "1.5595"), (0.7512345, "0.7512"), (0.25, "0.25"), (1.0, "1.0"), (0.0, "0.0"), (2.5e-05, "2.5e-05"),
     (12345.678, "12345.7"), (None, "")],
)
def test_tables_show_four_decimals_whatever_the_magnitude(value, shown) -> None:
    assert format_cell(value) == shown


def test_json_refuses_columns_that_share_a_name_while_csv_and_markdown_keep_every_column() -> None:
    joined = QueryResult(["key", "status", "job_key", "status"], [("a1", "done", "a1", "failed")])
    with pytest.raises(UserError) as raised:
        to_json(joined)
    assert raised.value.message.startswith("--format json: several columns are named 'status', and a JSON object "
                                           "keeps one value per name.\nFix: give each column its own name with AS")
    assert to_csv(joined) == "key,status,job_key,status\na1,done,a1,failed\n"
    assert to_markdown(joined).splitlines()[2] == "| a1 | done | a1 | failed |"


def test_a_markdown_cell_keeps_its_row_on_one_line() -> None:
    failed = QueryResult(["key", "error"], [("a1", "exit code 1; log a1.log\r\nTraceback | last line\nValueError")])
    assert to_markdown(failed).splitlines()[2:] == [
        "| a1 | exit code 1; log a1.log<br>Traceback \\| last line<br>ValueError |"]


def test_a_report_of_absurd_radii_prints_them(store: Store) -> None:
    # A log imported with radii of 1e30 (it warns): every number still prints, to three decimals.
    seed(store, SPEC, {**SAMPLES, "gaussian-sigma0.25": [(1e30, 1), (0.6, 1), (0.4, 1), (0.1, 1)]})
    row = next(line for line in render_report(experiment_report(store, "paper"), "text").splitlines()
               if "gaussian-sigma0.25" in line)
    acr = row.split()[3]
    assert acr.endswith(".000") and float(acr) == pytest.approx(2.5e29)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_report_of_radii_that_sum_to_infinity_prints_inf(store: Store) -> None:
    seed(store, SPEC, {**SAMPLES, "gaussian-sigma0.25": [(1.7e308, 1), (1.7e308, 1), (0.4, 1), (0.1, 1)]})
    row = next(line for line in render_report(experiment_report(store, "paper"), "text").splitlines()
               if "gaussian-sigma0.25" in line)
    assert row.split()[3] == "inf"


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def test_json_writes_nan_and_infinities_as_null() -> None:
    result = QueryResult(["big", "small", "undefined", "half", "count"], [(math.inf, -math.inf, math.nan, 0.5, 3)])
    rows = json.loads(to_json(result), parse_constant=_refuse_constant)
    assert rows == [{"big": None, "small": None, "undefined": None, "half": 0.5, "count": 3}]


def test_json_nests_the_json_text_the_store_keeps_and_leaves_other_text_alone() -> None:
    result = QueryResult(["config", "hyperparams", "swept", "error", "odd", "scalar"],
                         [('{"train": {"sigma": 0.5}}', "{}", '["eta", 2]', "{not json}", "[NaN]", "[1] and more")])
    rows = json.loads(to_json(result), parse_constant=_refuse_constant)
    assert rows == [{"config": {"train": {"sigma": 0.5}}, "hyperparams": {}, "swept": ["eta", 2],
                     "error": "{not json}", "odd": "[NaN]", "scalar": "[1] and more"}]
    assert to_csv(result).splitlines()[1].startswith('"{""train"": {""sigma"": 0.5}}",{}')


@pytest.mark.parametrize(("columns", "rows"), [
    (["config", "acr"], [["gaussian", "0.5"], ["smoothmix-eta=2", "1.0"]]),
    (["job_key", "radius"], []),
    (["error"], [["exited with code 2\nerror: no data"], ["é中文"], [""]]),
    (["note"], [["[red]not markup[/]"]]),
    (["log"], [["a\r\nb\x07"], ["x\ry"]]),  # control codes would move the cursor over the box
])
def test_a_query_table_looks_as_rich_draws_it(columns: list[str], rows: list[list[str]]) -> None:
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from smx.report import boxed_table

    table = Table(show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*map(Text, row))
    drawn = io.StringIO()
    Console(file=drawn, width=500, color_system=None).print(table)
    assert boxed_table(columns, rows) == drawn.getvalue()


def test_a_plot_has_a_panel_per_sigma_with_its_configs_in_the_reports_order_and_its_legend_beside_it() -> None:
    def curve(config: str, method: str, sigma: float, certified_radius: float) -> Curve:
        aggregate = Aggregate(config_name=config, method=method, sigma=sigma, acr=certified_radius / 2,
                              certify_key=config)
        return Curve(aggregate, radii=[certified_radius, 0.0], correct=[1, 0])

    smoothmix_configs = [curve(f"smoothmix-eta{eta}-sigma1", "smoothmix", 1.0, 2.0) for eta in (10, 2, 1)]
    many_configs = [curve(f"gaussian-run{run}", "gaussian", 0.25, 0.5) for run in range(12)]
    figure = certified_accuracy_figure("paper", [*smoothmix_configs, curve("gaussian-sigma1", "gaussian", 1.0, 3.0),
                                                 *many_configs])
    try:
        assert [axes.get_title() for axes in figure.axes] == ["σ = 0.25", "σ = 1"]
        labels = [[text.get_text() for text in axes.get_legend().get_texts()] for axes in figure.axes]
        assert labels[0][:3] == ["gaussian-run0 (ACR 0.250)", "gaussian-run1 (ACR 0.250)", "gaussian-run2 (ACR 0.250)"]
        assert labels[0][-1] == "gaussian-run11 (ACR 0.250)"
        assert labels[1] == ["gaussian-sigma1 (ACR 1.500)", "smoothmix-eta1-sigma1 (ACR 1.000)",
                             "smoothmix-eta2-sigma1 (ACR 1.000)", "smoothmix-eta10-sigma1 (ACR 1.000)"]
        looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in figure.axes[0].get_lines()]
        assert len(set(looks)) == 12
        assert [axes.get_xlim()[1] for axes in figure.axes] == pytest.approx([0.525, 3.15])
        # Half of the images are certified up to their radius, none past it.
        sigma_one = figure.axes[1].get_lines()[0].get_ydata()
        assert sigma_one[0] == 0.5 and sigma_one[-1] == 0.0
        figure.canvas.draw()
        for axes in figure.axes:
            assert axes.get_legend().get_window_extent().x0 > axes.get_window_extent().x1
    finally:
        pyplot().close(figure)


def test_a_plot_of_a_radius_near_the_largest_float_is_drawn() -> None:
    aggregate = Aggregate(config_name="nonsense", method="gaussian", sigma=0.5, acr=math.inf, certify_key="nonsense")
    figure = certified_accuracy_figure("imported", [Curve(aggregate, radii=[1.7e308, 0.5], correct=[1, 1])])
    try:
        assert figure.axes[0].get_xlim()[1] == 1e307
        figure.canvas.draw()
    finally:
        pyplot().close(figure)


def test_the_plot_lists_each_sigmas_configs_in_the_reports_order(store: Store, tmp_path, monkeypatch) -> None:
    import smx.report as report_module

    seeded = seed_with(store, """
        [[variant]]
        name = "smoothmix-eta1-onestep-sigma0.5"
        train.method = "smoothmix"
        train.smoothmix = { eta = 1.0, mix_step = 1 }

        [[variant]]
        name = "gaussian-run10"
        train.method = "gaussian"
        train.epochs = 7

        [[variant]]
        name = "gaussian-run2"
        train.method = "gaussian"
        train.epochs = 8
    """, {"smoothmix-eta1-onestep-sigma0.5": "smoothmix-eta1-sigma0.5", "gaussian-run10": "gaussian-sigma0.5",
          "gaussian-run2": "gaussian-sigma0.5"})

    drawn = []

    def keep(figure, path):  # type: ignore[no-untyped-def]
        drawn.append([[text.get_text().split(" (ACR")[0] for text in axes.get_legend().get_texts()]
                      for axes in figure.axes])
        pyplot().close(figure)
        return path

    monkeypatch.setattr(report_module, "save_plot", keep)
    # The seeded store holds summaries, not certificates: curves of nothing.
    monkeypatch.setattr(report_module, "certified_accuracy_curve", lambda radii, correct, levels: [0.0] * len(levels))
    report_module.plot_experiment(seeded, "paper", tmp_path / "paper.png")
    rows = experiment_report(seeded, "paper").rows
    by_sigma = [[row.config for row in rows if row.sigma == sigma] for sigma in sorted({row.sigma for row in rows})]
    assert drawn == [by_sigma]
    # The report puts "+ one-step adversary" (mix_step 1) after its mix_step 0 twin, where names sort it first.
    assert by_sigma[1][-3:] == ["smoothmix-eta1-sigma0.5", "smoothmix-eta1-onestep-sigma0.5",
                                "smoothmix-eta5-onestep-sigma0.5"]
    # Configs alike in what the report shows: in the order a reader counts their names, in both.
    assert by_sigma[1].index("gaussian-run2") + 1 == by_sigma[1].index("gaussian-run10")


def test_a_panel_of_80_configs_keeps_its_whole_legend_in_the_figure_and_no_two_curves_alike() -> None:
    curves = [Curve(Aggregate(config_name=f"smoothmix-eta={index % 8}-steps={index // 8}-onestep", method="smoothmix",
                              sigma=0.5, acr=0.5, certify_key=str(index)), radii=[1.0, 0.0], correct=[1, 0])
              for index in range(80)]
    figure = certified_accuracy_figure("many", curves)
    try:
        figure.canvas.draw()
        (axes,) = figure.axes
        assert len(axes.get_legend().get_texts()) == 80
        assert axes.get_legend().get_window_extent().x1 <= figure.bbox.x1
        assert axes.get_window_extent().width > 5 * figure.dpi  # the plot keeps its own 6 inches, less its labels
        assert len({(line.get_color(), line.get_linestyle(), line.get_marker()) for line in axes.get_lines()}) == 80
    finally:
        pyplot().close(figure)


def test_the_tuis_paper_acr_says_when_the_comparison_is_only_indicative(seeded: Store) -> None:
    result = experiment_results(seeded, "paper")
    rows = {row[result.columns.index("config")]: dict(zip(result.columns, row)) for row in result.rows}
    paper = PaperAcr(seeded.location)
    # Certified on 4 images, not the paper's 10,000.
    assert paper(rows["gaussian-sigma0.5"]) == PaperAcrValue(1.553, indicative=True)
    assert paper(rows["gaussian-mini"]) is None  # the paper has no mnist-mini


def test_a_config_that_matches_no_published_row_is_told_the_nearest_and_what_differs(store: Store) -> None:
    seeded = seed_with(store, """
        [[variant]]
        name = "smoothmix-eta5-short-sigma0.5"
        train.method = "smoothmix"
        train.smoothmix = { eta = 5.0, steps = 2 }
    """, {"smoothmix-eta5-short-sigma0.5": "smoothmix-eta1-sigma0.5"})
    report = experiment_report(seeded, "paper", compare_with_paper=True)
    rows = {row.config: row for row in report.rows}
    assert rows["smoothmix-eta5-short-sigma0.5"].published is None
    assert rows["smoothmix-eta5-short-sigma0.5"].nearest == "Table 2 'SmoothMix (eta=5)': steps = 2 (paper: 4)"
    assert rows["gaussian-mini"].nearest == ""  # the paper has no mnist-mini at all
    assert report.unmatched_note == ("no published row matches these configs' hyperparameters: "
                                     "smoothmix-eta5-short-sigma0.5 (nearest: Table 2 'SmoothMix (eta=5)': steps = 2 "
                                     "(paper: 4)).")
    assert report.unmatched_note in report.notes()
    assert experiment_report(seeded, "paper").unmatched_note is None  # nothing compared
