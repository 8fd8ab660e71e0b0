"""Section 3.1 analyses (Table 1's confidences under attack, Figure 3's mixing ratios): the science against a
linear classifier whose smoothed probabilities are known in closed form, the [analyze] spec section and its
jobs, and one tiny experiment through `smx submit` into the store, the tables and the plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from matplotlib.colors import to_rgb
from scipy.stats import norm
from sqlalchemy import select
from torch import nn

from smx.analysis_report import (CONFIDENCE_COLUMNS, MIXING_RATIO_COLUMNS, AnalysedConfig, analysis_tables,
                                 confidence_figure, mixing_ratio_figure, plot_analysis)
from smx.report import pyplot, render_analysis, save_plot
from smx.db.models import AnalysisResult, Certificate, Job
from smx.db.store import Store, open_store
from smx.plan import build_plan, content_key
from smx.science.analysis import confidence_under_attack, equal_confidence_mixing_ratios
from smx.spec import SpecError, parse_spec
from smx.tasks import analyze
from tests.conftest import REPO, smx_command
from tests.specs import variants
from tests.test_fuzz_cli import run_cli
from tests.test_report import seed

SIGMA = 0.25
DIRECTION = (0.6, 0.8)  # unit normal of the decision boundary
MC_SAMPLES = 4000
# Several standard errors of a Monte Carlo proportion from MC_SAMPLES draws (at most 0.5 / sqrt(4000) = 0.008).
TOLERANCE = 0.03


def linear_classifier(bias: float) -> nn.Module:
    """Two classes split by the line DIRECTION . x + bias = 0 (class 1 on the positive side), for 1x1x2 images.

    Under noise N(0, SIGMA^2 I) the base classifier picks class 1 with probability Phi(margin / SIGMA), where
    margin = DIRECTION . x + bias (DIRECTION has unit norm), and every attack moves straight along DIRECTION.
    """
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        normal = torch.tensor(DIRECTION)
        layer.weight.copy_(torch.stack((-normal, normal)))
        layer.bias.copy_(torch.tensor([-bias, bias]))
    return nn.Sequential(nn.Flatten(), layer)


def images_of(*points: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(points).view(len(points), 1, 1, 2)


def margin(point: tuple[float, float], bias: float) -> float:
    return point[0] * DIRECTION[0] + point[1] * DIRECTION[1] + bias


# ---- science ----


def test_confidences_match_the_closed_form_and_fall_with_the_attack_radius() -> None:
    torch.manual_seed(0)
    bias = -0.8
    points = [(0.8, 0.9), (0.3, 0.4)]  # margins +0.4 (class 1) and -0.3 (class 0); the attacks stay inside [0, 1]
    labels = torch.tensor([1, 0])
    epsilons = [0.0, 0.2, 0.4]
    fractions: list[float] = []
    results = confidence_under_attack(
        linear_classifier(bias), images_of(*points), labels, [10, 11], sigma=SIGMA, epsilons=epsilons,
        attack_steps=5, attack_noise_samples=8, mc_samples=MC_SAMPLES, batch_size=1000, num_classes=2,
        on_progress=fractions.append,
    )
    assert len(results) == len(points) * len(epsilons)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for result in results:
        point = points[result.index - 10]
        # The best L2 attack on a linear classifier moves the full radius towards the boundary.
        expected = norm.cdf((abs(margin(point, bias)) - result.epsilon) / SIGMA)
        assert result.distance == pytest.approx(result.epsilon, abs=1e-5)
        assert result.true_confidence == pytest.approx(expected, abs=TOLERANCE)
        # Two classes: the only other class has the rest.
        assert result.off_class_confidence == pytest.approx(1 - result.true_confidence)
        if abs(expected - 0.5) > TOLERANCE:
            assert (result.prediction == result.label) == (expected > 0.5)
    for index in (10, 11):
        curve = [result.true_confidence for result in results if result.index == index]
        assert curve == sorted(curve, reverse=True) and curve[0] - curve[-1] > 0.3


def test_mixing_ratio_is_the_boundary_crossing_rounded_up_to_the_grid() -> None:
    torch.manual_seed(0)
    bias, grid = -0.875, 20
    # Margins +0.325 and -0.675: the adversary, 4 steps of 0.25 straight across the boundary (a distance of 1),
    # crosses it at ratios 0.325 and 0.675. The third image is misclassified and left out.
    points = [(0.8, 0.9), (0.2, 0.1), (0.2, 0.1)]
    labels = torch.tensor([1, 0, 1])
    fractions: list[float] = []
    results = equal_confidence_mixing_ratios(
        linear_classifier(bias), images_of(*points), labels, [0, 1, 2], sigma=SIGMA, alpha=0.25, steps=4,
        max_norm=8.0, noise_samples=4, mc_samples=MC_SAMPLES, grid=grid, batch_size=1000, num_classes=2,
        on_progress=fractions.append,
    )
    assert [result.index for result in results] == [0, 1]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for result in results:
        crossing = abs(margin(points[result.index], bias))  # the adversary lies at distance 1
        assert result.distance == pytest.approx(1.0, abs=1e-5)
        assert crossing <= result.ratio < crossing + 1 / grid
        assert result.prediction == 1 - result.label


def test_an_adversary_that_stops_short_of_the_boundary_leaves_no_ratio() -> None:
    torch.manual_seed(0)
    results = equal_confidence_mixing_ratios(
        linear_classifier(-0.875), images_of((0.8, 0.9)), torch.tensor([1]), [0], sigma=SIGMA, alpha=0.05, steps=2,
        max_norm=8.0, noise_samples=4, mc_samples=MC_SAMPLES, grid=10, batch_size=1000, num_classes=2,
    )
    assert [(result.ratio, result.prediction) for result in results] == [(None, None)]
    assert results[0].distance == pytest.approx(0.1, abs=1e-5)


# ---- spec and plan ----

BASE_SPEC = textwrap.dedent("""
    [experiment]
    name = "analysis"

    [data]
    dataset = "mnist-mini"

    [train]
    sigma = 0.5
    epochs = 1

    [[variant]]
    name = "gaussian"
    train.method = "gaussian"

    [[variant]]
    name = "smoothmix"
    train.method = "smoothmix"

    [[variant]]
    name = "gaussian-certified-at-0.25"
    train.method = "gaussian"
    certify.sigma = 0.25
""")
ANALYZE_SECTION = "\n[analyze]\nepsilons = [2.0, 1.0]\nmc_samples = 64\n"


def test_analyze_adds_one_job_per_trained_model_and_changes_no_other_key() -> None:
    plain, analysed = build_plan(parse_spec(BASE_SPEC)), build_plan(parse_spec(BASE_SPEC + ANALYZE_SECTION))
    assert "analyze" not in {job.kind for job in plain.jobs}
    assert {job.name: job.key for job in plain.jobs} == {
        job.name: job.key for job in analysed.jobs if job.kind != "analyze"
    }
    assert [job.kind for job in analysed.jobs] == ["train"] * 2 + ["certify"] * 3 + ["analyze"] * 2 + ["aggregate"]
    trains = {job.config_name: job for job in analysed.jobs if job.kind == "train"}
    analyses = [job for job in analysed.jobs if job.kind == "analyze"]
    assert [job.name for job in analyses] == ["analyze/gaussian", "analyze/smoothmix"]
    for job in analyses:
        assert job.parents == [trains[job.config_name].key]
        assert job.inputs == {"analyze": job.inputs["analyze"], "data": {"dataset": "mnist-mini"}}
        assert job.key == content_key("analyze", job.inputs, job.parents)
        assert job.runtime == {"data_root": None, "download": False}
    settings = analyses[0].inputs["analyze"]
    assert settings["epsilons"] == [0.0, 1.0, 2.0] and settings["sigma"] == 0.5 and settings["mc_samples"] == 64
    assert settings["kinds"] == ["confidence", "mixing_ratio"]
    assert analysed.jobs[-1].parents == plain.jobs[-1].parents


def test_analysis_settings_rekey_only_the_analyze_jobs() -> None:
    before = build_plan(parse_spec(BASE_SPEC + ANALYZE_SECTION))
    after = build_plan(parse_spec(BASE_SPEC + ANALYZE_SECTION.replace("64", "128")))
    changed = {job.name for job, other in zip(before.jobs, after.jobs) if job.key != other.key}
    assert changed == {"analyze/gaussian", "analyze/smoothmix"}


@pytest.mark.parametrize(("section", "expected"), [
    ("[analyze]\nepsilon = [1.0]\n", 'analyze.epsilon: unknown key (did you mean "epsilons"?)'),
    ('[analyze]\nkinds = ["confidense"]\n', 'unknown analysis \'confidense\' (did you mean "confidence"?)'),
    ("[analyze]\nepsilons = [-1.0]\n", "analyze.epsilons: epsilons must be >= 0"),
    ("[analyze]\ngrid = 0\n", "analyze.grid: must be >= 1"),
    ('[sweep.grid]\n"analyze.grid" = [10, 20]\n[analyze]\n', "is shared by the whole experiment and cannot be swept"),
    ("[[variant]]\nname = \"x\"\nanalyze.grid = 5\n", "variant[4].analyze: analyze settings are shared by the whole"),
])
def test_analyze_mistakes_name_the_key_and_the_fix(section: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(BASE_SPEC + section)
    assert expected in str(caught.value)


# ---- end to end ----

TINY_SPEC = textwrap.dedent("""
    [experiment]
    name = "tiny_analysis"

    [data]
    dataset = "mnist-mini"

    [model]
    arch = "lenet"

    [train]
    sigma = 0.5
    epochs = 1
    batch_size = 256

    [certify]
    n0 = 10
    n = 50
    batch_size = 250
    max_samples = 2

    [analyze]
    max_samples = 4
    mc_samples = 32
    epsilons = [0.5, 1.0]
    attack_steps = 2
    attack_noise_samples = 2
    mix_alpha = 1.0
    mix_steps = 2
    mix_noise_samples = 2
    grid = 5
""")


@pytest.fixture(scope="module")
def analysed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analysis")
    spec = root / "tiny_analysis.toml"
    spec.write_text(TINY_SPEC)
    store = root / "store"
    environment = {**os.environ, "SMX_STORE": str(store), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(smx_command("submit", str(spec)), capture_output=True, text=True, env=environment,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 4 jobs done" in result.stdout
    return store


def test_submit_fills_analysis_results(analysed_store: Path) -> None:
    store = open_store(str(analysed_store), create=False)
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT analysis, epsilon, count(*), min(sample_index), max(sample_index) FROM analysis_results "
            "GROUP BY analysis, epsilon ORDER BY analysis, epsilon").all()
        ratios = connection.exec_driver_sql(
            "SELECT mixing_ratio FROM analysis_results WHERE analysis = 'mixing_ratio'").scalars().all()
    assert [tuple(row) for row in rows[:3]] == [("confidence", epsilon, 4, 0, 3) for epsilon in (0.0, 0.5, 1.0)]
    assert [row[0] for row in rows[3:]] == ["mixing_ratio"] * (len(rows) - 3)
    assert all(ratio is None or ratio in (0.2, 0.4, 0.6, 0.8, 1.0) for ratio in ratios)


def test_analysis_tables_and_plots(analysed_store: Path, tmp_path: Path) -> None:
    store = open_store(str(analysed_store), create=False)
    tables = analysis_tables(store, "tiny_analysis")
    confidence = tables["confidence"]
    assert confidence.columns == CONFIDENCE_COLUMNS
    assert [(row[0], row[1], row[2]) for row in confidence.rows] == [("base", eps, 4) for eps in (0.0, 0.5, 1.0)]
    for _, _, _, true, off_class, accuracy in confidence.rows:
        assert 0 <= true <= 1 and 0 <= off_class <= 1 and true + off_class <= 1 + 1e-9 and 0 <= accuracy <= 1
    # The one-epoch model gets at least one of the 4 digits right, so there are mixing ratios too.
    [(config, samples, changed, *_)] = tables["mixing_ratio"].rows
    assert tables["mixing_ratio"].columns == MIXING_RATIO_COLUMNS
    assert config == "base" and 1 <= samples <= 4 and 0 <= changed <= samples
    text = render_analysis("confidence", confidence, "text").splitlines()
    assert text[2].split()[:3] == CONFIDENCE_COLUMNS[:3] and set(text[3]) == {"-"}
    assert [line.split()[:3] for line in text[4:7]] == [["base", f"{eps:.1f}", "4"] for eps in (0.0, 0.5, 1.0)]
    assert "|" not in "".join(text) and render_analysis("confidence", confidence, "md").count("|") > 10
    paths = plot_analysis(store, "tiny_analysis", tmp_path / "plots" / "tiny_analysis.png").written
    plots = tmp_path / "plots"
    assert paths == [plots / "tiny_analysis-confidence.png", plots / "tiny_analysis-mixing-ratio.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smx_plot_names_the_analysis_plots_after_out_and_writes_none_when_one_cannot_be(analysed_store: Path,
                                                                                         tmp_path: Path) -> None:
    code, out, err = run_cli("plot", "tiny_analysis", "--store", str(analysed_store), "--out", str(tmp_path / "x.svg"))
    assert code == 0, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x-confidence.svg", "x-mixing-ratio.svg", "x.svg"]
    assert all(path.read_text().lstrip().startswith("<?xml") for path in tmp_path.iterdir())
    (tmp_path / "y-mixing-ratio.png").mkdir()
    code, out, err = run_cli("plot", "tiny_analysis", "--store", str(analysed_store), "--out", str(tmp_path / "y.png"))
    assert code == 2 and f"cannot write {tmp_path / 'y-mixing-ratio.png'}: it is a directory" in err
    assert not (tmp_path / "y.png").exists() and not (tmp_path / "y-confidence.png").exists()


def test_analysis_report_is_torch_free_and_a_rerun_replaces_the_rows(analysed_store: Path) -> None:
    report = ("import json, sys; from smx.db.store import open_store; from smx.analysis_report import analysis_tables;"
              f"tables = analysis_tables(open_store({str(analysed_store)!r}, create=False), 'tiny_analysis');"
              "assert 'torch' not in sys.modules; print(json.dumps({k: v.rows for k, v in tables.items()}))")
    listed = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True, cwd=REPO, check=True)
    store = open_store(str(analysed_store), create=False)
    in_process = analysis_tables(store, "tiny_analysis")
    assert json.loads(listed.stdout) == {name: [list(row) for row in table.rows] for name, table in in_process.items()}
    with store.session() as session:
        job = session.scalars(select(Job).where(Job.kind == "analyze")).one()
        before = session.execute(select(AnalysisResult.analysis, AnalysisResult.sample_index, AnalysisResult.epsilon,
                                        AnalysisResult.true_confidence, AnalysisResult.mixing_ratio)
                                 .order_by(AnalysisResult.id)).all()
    analyze.run(store, job, "cpu", lambda fraction, text: None)
    with store.session() as session:
        after = session.execute(select(AnalysisResult.analysis, AnalysisResult.sample_index, AnalysisResult.epsilon,
                                       AnalysisResult.true_confidence, AnalysisResult.mixing_ratio)
                                .order_by(AnalysisResult.id)).all()
    # Seeded: the rerun computes the same rows and replaces the old ones instead of adding to them.
    assert after == before


# ---- the analysis plots: a panel per sigma, and no plot left from an analysis the experiment no longer has ----

def analysed_config(name: str, sigma: float, grid: int = 5) -> AnalysedConfig:
    confidence = [(epsilon, 4, 0.9 - epsilon / 4, 0.05 + epsilon / 8, 0.75) for epsilon in (0.0, 0.5, 1.0)]
    return AnalysedConfig(name, sigma, confidence, [0.2, 0.2, 1.0, None], grid)


def test_the_analysis_plots_have_a_panel_per_sigma_each_with_its_configs_in_the_same_places() -> None:
    # Listed out of order: each panel orders its configs by name, so a sweep's method has one colour in all.
    configs = [analysed_config(f"{method}-sigma={sigma}", sigma) for method in ("smoothmix", "gaussian", "smoothadv")
               for sigma in (1.0, 0.25, 0.5)]
    confidence, mixing = confidence_figure("sweep", configs), mixing_ratio_figure("sweep", configs)
    try:
        for figure in (confidence, mixing):
            assert [axes.get_title() for axes in figure.axes] == ["σ = 0.25", "σ = 0.5", "σ = 1"]
            figure.canvas.draw()
            for axes in figure.axes:  # each panel's legend beside it, inside the figure
                legend = axes.get_legend().get_window_extent()
                assert legend.x0 > axes.get_window_extent().x1 and legend.x1 <= figure.bbox.x1
        assert [axes.get_ylim() for axes in confidence.axes] == [(0, 1)] * 3
        # A config's true-class and off-class lines, in its panel only, in its place's colour.
        assert [[line.get_color() for line in axes.get_lines()] for axes in confidence.axes] == [
            ["C0", "C0", "C1", "C1", "C2", "C2"]] * 3
        assert [[text.get_text() for text in axes.get_legend().get_texts()] for axes in confidence.axes] == [
            [f"{method}-sigma={sigma}" for method in ("gaussian", "smoothadv", "smoothmix")]
            + ["true class", "max off-class"] for sigma in (0.25, 0.5, 1.0)]
        mixing_labels = [text.get_text() for text in mixing.axes[1].get_legend().get_texts()]
        assert mixing_labels[0] == "gaussian-sigma=0.5 (4 correct, 1 never changed)"
        # The histograms' colours are the lines': a config looks the same in both plots.
        assert [[patch.get_facecolor()[:3] for patch in axes.patches] for axes in mixing.axes] == [
            [to_rgb(f"C{position}") for position in range(3)]] * 3
    finally:
        pyplot().close(confidence)
        pyplot().close(mixing)
    single = confidence_figure("one", configs[:3])
    try:
        assert [axes.get_title() for axes in single.axes] == ["σ = 0.25", "σ = 0.5", "σ = 1"]
        assert [axes.get_title() for axes in confidence_figure("one", configs[1:2]).axes] == ["σ = 0.25"]
    finally:
        pyplot().close("all")


SWEEP_SPEC = textwrap.dedent("""
    [experiment]
    name = "sweep"

    [data]
    dataset = "mnist"

    [[sweep.zip]]
    "train.sigma" = [0.25, 0.5]
""") + variants("gaussian", "smoothmix") + """
[analyze]
kinds = ["confidence"]
epsilons = [0.5]
"""
SWEEP_CONFIGS = ["gaussian-sigma=0.25", "gaussian-sigma=0.5", "smoothmix-sigma=0.25", "smoothmix-sigma=0.5"]


@pytest.fixture
def sweep_store(tmp_path: Path) -> Iterator[Store]:
    """Three experiments of the same models, with made-up certificates and confidence results: sweep (each config
    analysed at its training sigma), sweep_at_half (all analysed at sigma 0.5) and sweep-mixing-ratio (without
    [analyze]; its name is that of sweep's mixing-ratio plot)."""
    store = open_store(str(tmp_path / "store"))
    at_half = SWEEP_SPEC.replace('name = "sweep"', 'name = "sweep_at_half"').replace(
        'kinds = ["confidence"]', 'kinds = ["confidence"]\nsigma = 0.5')
    unanalysed = SWEEP_SPEC.split("[analyze]")[0].replace('name = "sweep"', 'name = "sweep-mixing-ratio"')
    for spec_text in (SWEEP_SPEC, at_half, unanalysed):
        seed(store, spec_text, {name: [(0.5, 1), (0.0, 0)] for name in SWEEP_CONFIGS})
    jobs = [job for spec_text in (SWEEP_SPEC, at_half) for job in build_plan(parse_spec(spec_text)).jobs]
    with store.session() as session:
        session.add_all(Certificate(job_key=key, sample_index=index, label=0, prediction=0 if correct else -1,
                                    radius=radius, correct=correct, seconds=0.1)
                        for key in {job.key for job in jobs if job.kind == "certify"}
                        for index, (radius, correct) in enumerate([(0.5, 1), (0.0, 0)]))
        session.add_all(AnalysisResult(job_key=job.key, analysis="confidence", sample_index=0, label=0,
                                       epsilon=epsilon, distance=epsilon, prediction=0,
                                       true_confidence=0.9 - epsilon, off_class_confidence=0.1)
                        for job in jobs if job.kind == "analyze" for epsilon in (0.0, 0.5))
    yield store
    store.engine.dispose()


def test_each_configs_analyses_are_drawn_at_the_sigma_they_were_analysed_at(sweep_store: Store, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import smx.analysis_report as analysis_report

    drawn = []

    def keep(figure, path):  # type: ignore[no-untyped-def]
        drawn.append({axes.get_title(): [text.get_text() for text in axes.get_legend().get_texts()]
                      if axes.get_legend() else [] for axes in figure.axes})
        return save_plot(figure, path)

    monkeypatch.setattr(analysis_report, "save_plot", keep)
    plots = plot_analysis(sweep_store, "sweep", tmp_path / "sweep.png")
    assert plots.written == [tmp_path / "sweep-confidence.png"] and not plots.removed
    key = ["true class", "max off-class"]
    assert drawn == [{"σ = 0.25": ["gaussian-sigma=0.25", "smoothmix-sigma=0.25", *key],
                      "σ = 0.5": ["gaussian-sigma=0.5", "smoothmix-sigma=0.5", *key]}]
    plot_analysis(sweep_store, "sweep_at_half", tmp_path / "sweep_at_half.png")
    assert drawn[1] == {"σ = 0.5": [*SWEEP_CONFIGS, *key]}


def test_smx_plot_removes_the_analysis_plots_it_no_longer_writes_from_the_stores_folder_only(sweep_store: Store,
                                                                                         tmp_path: Path) -> None:
    store = str(sweep_store.root)
    plots = sweep_store.root / "plots"
    plots.mkdir()
    for folder in (plots, tmp_path):
        for name in ("a-confidence.png", "a-mixing-ratio.png", "a-confidence.svg", "a-mixing-ratio-old.png"):
            (folder / name).write_text("an earlier plot")
    code, out, err = run_cli("plot", "sweep-mixing-ratio", "--store", store, "--out", str(plots / "a.png"))
    assert code == 0, err
    assert out.splitlines()[1:] == [
        f"removed {plots / 'a-confidence.png'}: sweep-mixing-ratio has no confidence analysis results now.",
        f"removed {plots / 'a-mixing-ratio.png'}: sweep-mixing-ratio has no mixing ratio analysis results now."]
    assert sorted(path.name for path in plots.iterdir()) == ["a-confidence.svg", "a-mixing-ratio-old.png", "a.png"]
    # Outside the store's folder such files may be the user's own: named, not removed.
    code, out, err = run_cli("plot", "sweep-mixing-ratio", "--store", store, "--out", str(tmp_path / "a.png"))
    assert code == 0, err
    assert "removed" not in out
    assert f"note: {tmp_path / 'a-confidence.png'} is not from this plot: sweep-mixing-ratio has no confidence " \
           "analysis results now" in " ".join(err.split())
    assert (tmp_path / "a-mixing-ratio.png").read_text() == "an earlier plot"
    # "sweep" has confidence results only: its confidence plot replaces the old one, its mixing-ratio one goes.
    (plots / "a-mixing-ratio.png").write_text("an earlier plot")
    code, out, err = run_cli("plot", "sweep", "--store", store, "--out", str(plots / "a.png"))
    assert code == 0, err
    assert out.splitlines()[2:] == [
        f"removed {plots / 'a-mixing-ratio.png'}: sweep has no mixing ratio analysis results now."]
    assert (plots / "a-confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # sweep-mixing-ratio.png is also the certified-accuracy plot of the experiment of that name: left alone, as
    # `smx remove sweep` leaves it.
    code, out, err = run_cli("plot", "sweep-mixing-ratio", "--store", store)
    assert code == 0, err
    own_plot = (plots / "sweep-mixing-ratio.png").read_bytes()
    code, out, err = run_cli("plot", "sweep", "--store", store)
    assert code == 0, err
    assert "removed" not in out and (plots / "sweep-mixing-ratio.png").read_bytes() == own_plot
