"""Analyze jobs' results out of the store: the SmoothMix paper's Table 1 and Figure 3 for each config of an
experiment, as tables (QueryResult, for smx.report.render) and PNG plots. Torch-free.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from sqlalchemy.orm import Session

from smx.db.models import AnalysisResult
from smx.db.queries import ConfigAnalysis, analyses_of, require_experiment
from smx.db.readonly import QueryResult
from smx.db.store import ANALYSIS_PLOT_SUFFIXES, Store
from smx.report import pyplot, save_plot

CONFIDENCE_COLUMNS = ["config", "epsilon", "samples", "true_class_confidence", "max_off_class_confidence", "accuracy"]
MIXING_RATIO_COLUMNS = ["config", "samples", "changed", "mean_ratio", "median_ratio", "mean_boundary_distance"]


def analysis_tables(store: Store, experiment: str) -> dict[str, QueryResult]:
    """The experiment's analysis summaries, keyed by analysis; only analyses with results appear, so an
    experiment without [analyze] gives {}.

    "confidence" (Table 1), one row per config and attack radius (0.0: clean): the means over the test images
    of the estimated P(f(x' + delta) = y) and max_{c != y} P(f(x' + delta) = c), and the share of images whose
    smoothed prediction is still right. "mixing_ratio" (Figure 3), one row per config: the correctly classified
    images analysed, how many changed prediction before reaching their adversary, the mean and median ratio
    of those, and their mean L2 distance to the change (ratio times the adversary's distance).
    """
    with store.read_session() as session:
        analyses = _analyses(session, experiment)
        confidence_rows = [
            (analysis.config_name, *means) for analysis in analyses for means in _confidence_means(analysis)
        ]
        mixing_rows = [
            (analysis.config_name, *_mixing_summary(mixing))
            for analysis in analyses
            if (mixing := _rows_of(analysis, "mixing_ratio"))
        ]
    tables = {"confidence": QueryResult(CONFIDENCE_COLUMNS, confidence_rows),
              "mixing_ratio": QueryResult(MIXING_RATIO_COLUMNS, mixing_rows)}
    return {name: table for name, table in tables.items() if table.rows}


def analysis_plot_paths(beside: Path) -> dict[str, Path]:
    """Where `smx plot` writes each analysis's plot: beside the certified-accuracy plot `beside`, named after it and
    in its format (quickstart.png: quickstart-confidence.png, quickstart-mixing-ratio.png)."""
    return {kind: beside.with_name(f"{beside.stem}{suffix}{beside.suffix}")
            for kind, suffix in ANALYSIS_PLOT_SUFFIXES.items()}


def plot_analysis(store: Store, experiment: str, beside: Path) -> list[Path]:
    """One image per analysis with results, every config of the experiment overlaid (see analysis_plot_paths): both
    mean confidences against the attack radius, and histograms of the mixing ratios on the analysis grid. Returns
    the paths written; [] for an experiment without [analyze]."""
    with store.read_session() as session:
        analyses = _analyses(session, experiment)
        confidence = {analysis.config_name: _confidence_means(analysis) for analysis in analyses}
        mixing = {
            analysis.config_name: (analysis.settings["grid"], [row.mixing_ratio for row in rows])
            for analysis in analyses
            if (rows := _rows_of(analysis, "mixing_ratio"))
        }
    confidence = {name: means for name, means in confidence.items() if means}
    paths = analysis_plot_paths(beside)
    written = []
    if confidence:
        written.append(_plot_confidence(experiment, confidence, paths["confidence"]))
    if mixing:
        written.append(_plot_mixing_ratios(experiment, mixing, paths["mixing_ratio"]))
    return written


def _analyses(session: Session, experiment: str) -> list[ConfigAnalysis]:
    require_experiment(session, experiment)
    return analyses_of(session, experiment)


def _rows_of(analysis: ConfigAnalysis, kind: str) -> list[AnalysisResult]:
    return [row for row in analysis.results if row.analysis == kind]


def _confidence_means(analysis: ConfigAnalysis) -> list[tuple[float, int, float, float, float]]:
    """(epsilon, samples, mean true-class confidence, mean max off-class confidence, accuracy) by epsilon."""
    rows = _rows_of(analysis, "confidence")
    means = []
    for epsilon in sorted({row.epsilon for row in rows}):
        at_epsilon = [row for row in rows if row.epsilon == epsilon]
        means.append((
            epsilon,
            len(at_epsilon),
            statistics.fmean(row.true_confidence for row in at_epsilon),
            statistics.fmean(row.off_class_confidence for row in at_epsilon),
            statistics.fmean(row.prediction == row.label for row in at_epsilon),
        ))
    return means


def _mixing_summary(rows: list[AnalysisResult]) -> tuple[int, int, float | None, float | None, float | None]:
    """(images, changed, mean ratio, median ratio, mean distance to the change) of one config's mixing ratios."""
    changed = [row for row in rows if row.mixing_ratio is not None]
    if not changed:
        return len(rows), 0, None, None, None
    ratios = [row.mixing_ratio for row in changed]
    return (len(rows), len(changed), statistics.fmean(ratios), statistics.median(ratios),
            statistics.fmean(row.mixing_ratio * row.distance for row in changed))


def _plot_confidence(
    experiment: str, confidence: dict[str, list[tuple[float, int, float, float, float]]], path: Path
) -> Path:
    figure, axes = pyplot().subplots(figsize=(7, 4.5), dpi=120)
    for color, (name, means) in enumerate(confidence.items()):
        epsilons = [epsilon for epsilon, *_ in means]
        axes.plot(epsilons, [true for _, _, true, _, _ in means], marker="o", color=f"C{color}",
                  label=f"{name}: true class")
        axes.plot(epsilons, [off for _, _, _, off, _ in means], marker="s", linestyle="--", color=f"C{color}",
                  label=f"{name}: max off-class")
    axes.set_xlabel("PGD radius ε (L2; 0 = clean)")
    axes.set_ylabel("mean confidence of the smoothed classifier")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.set_title(f"{experiment}: confidence under attack (Table 1)")
    axes.legend(fontsize=8)
    return save_plot(figure, path)


def _plot_mixing_ratios(experiment: str, mixing: dict[str, tuple[int, list[float | None]]], path: Path) -> Path:
    grid = max(grid for grid, _ in mixing.values())
    # Ratios are multiples of 1/grid: one bin centred on each.
    edges = [(step - 0.5) / grid for step in range(1, grid + 2)]
    figure, axes = pyplot().subplots(figsize=(7, 4.5), dpi=120)
    for color, (name, (_, ratios)) in enumerate(mixing.items()):
        changed = [ratio for ratio in ratios if ratio is not None]
        axes.hist(changed, bins=edges, weights=[1 / len(ratios)] * len(changed), histtype="stepfilled", alpha=0.4,
                  color=f"C{color}", edgecolor=f"C{color}",
                  label=f"{name} ({len(ratios)} correct, {len(ratios) - len(changed)} never changed)")
    axes.set_xlabel("equal-confidence mixing ratio λ")
    axes.set_ylabel("share of correctly classified images")
    axes.set_xlim(0, 1 + 0.5 / grid)
    axes.grid(alpha=0.3)
    axes.set_title(f"{experiment}: equal-confidence mixing ratios (Figure 3)")
    axes.legend(fontsize=8)
    return save_plot(figure, path)
