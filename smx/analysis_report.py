"""Analyze jobs' results out of the store: the SmoothMix paper's Table 1 and Figure 3 for each config of an
experiment, as tables (QueryResult, for smx.report.render) and PNG plots. Torch-free.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from smx.db.models import AnalysisResult
from smx.db.queries import ConfigAnalysis, analyses_of, experiment_names, require_experiment
from smx.db.readonly import QueryResult
from smx.db.store import ANALYSIS_PLOT_SUFFIXES, Store
from smx.report import finish_sigma_panel, natural_order, save_plot, sigma_panels

CONFIDENCE_COLUMNS = ["config", "epsilon", "samples", "true_class_confidence", "max_off_class_confidence", "accuracy"]
MIXING_RATIO_COLUMNS = ["config", "samples", "changed", "mean_ratio", "median_ratio", "mean_boundary_distance"]
ANALYSIS_MARKERS = ("o", "s", "^", "v", "D", "x")


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


@dataclass
class AnalysedConfig:
    """One config's analysis results as the plots draw them."""

    name: str
    sigma: float  # the noise level of its analyses: [analyze] sigma, or the config's training sigma
    confidence: list[tuple[float, int, float, float, float]]  # see _confidence_means; [] without that analysis
    mixing_ratios: list[float | None]  # one per correctly classified image; None: it never changed prediction
    grid: int  # the mixing ratios are multiples of 1/grid


@dataclass
class AnalysisPlots:
    """What `smx plot` did at the analysis plots' paths beside a certified-accuracy plot (see analysis_plot_paths)."""

    written: list[Path]
    # By analysis: a plot an earlier `smx plot` left in the store's plots folder, of an analysis the experiment has no
    # results of now; and such files elsewhere, which may be the user's own, left where they are.
    removed: dict[str, Path] = field(default_factory=dict)
    left: dict[str, Path] = field(default_factory=dict)
    not_removed: list[str] = field(default_factory=list)  # "PATH: why" of such plots that could not be removed


def plot_analysis(store: Store, experiment: str, beside: Path) -> AnalysisPlots:
    """One image per analysis with results (see analysis_plot_paths), one panel per sigma with the configs analysed
    at it: both mean confidences against the attack radius, and histograms of the mixing ratios on the analysis
    grid. A file at the path of an analysis without results, left by an earlier plot, would pass for this one's: in
    the store's plots folder, which smx owns, it is removed, unless its name is another experiment's, whose
    certified-accuracy plot it may be (as `smx remove` leaves it); elsewhere it is only reported."""
    in_store = beside.parent.resolve() == (store.root / "plots").resolve()
    with store.read_session() as session:
        configs = [_analysed_config(analysis) for analysis in _analyses(session, experiment)]
        others = set(experiment_names(session)) - {experiment}
    figures = {"confidence": confidence_figure, "mixing_ratio": mixing_ratio_figure}
    has_results = {"confidence": any(config.confidence for config in configs),
                   "mixing_ratio": any(config.mixing_ratios for config in configs)}
    plots = AnalysisPlots(written=[])
    for kind, path in analysis_plot_paths(beside).items():
        if has_results[kind]:
            plots.written.append(save_plot(figures[kind](experiment, configs), path))
        elif path.stem not in others and path.is_file():
            if not in_store:
                plots.left[kind] = path
                continue
            try:
                path.unlink()
            except OSError as error:
                plots.not_removed.append(f"{path}: {error.strerror or error}")
            else:
                plots.removed[kind] = path
    return plots


def confidence_figure(experiment: str, configs: list[AnalysedConfig]) -> Any:
    """The confidence analysis (Table 1) of the configs that have it, one panel per sigma: each config's mean
    true-class (solid) and max off-class (dashed) confidence against the attack radius."""
    from matplotlib.lines import Line2D

    panels = _panels([config for config in configs if config.confidence])
    key = [Line2D([], [], color="0.3", label="true class"),
           Line2D([], [], color="0.3", linestyle="--", label="max off-class")]
    figure, axes_column = sigma_panels([[config.name for config in panel] + [line.get_label() for line in key]
                                        for panel in panels.values()])
    for (sigma, panel), axes in zip(panels.items(), axes_column):
        for position, config in enumerate(panel):
            color, marker = _look(position)
            epsilons = [epsilon for epsilon, *_ in config.confidence]
            axes.plot(epsilons, [true for _, _, true, _, _ in config.confidence], color=color, marker=marker,
                      label=config.name)
            axes.plot(epsilons, [off for _, _, _, off, _ in config.confidence], color=color, marker=marker,
                      linestyle="--")
        axes.set_xlabel("PGD radius ε (L2; 0 = clean)")
        axes.set_ylabel("mean confidence of the smoothed classifier")
        axes.set_ylim(0, 1)
        finish_sigma_panel(axes, sigma, key)
    figure.suptitle(f"{experiment}: confidence under attack (Table 1)")
    return figure


def mixing_ratio_figure(experiment: str, configs: list[AnalysedConfig]) -> Any:
    """The mixing-ratio analysis (Figure 3) of the configs that have it, one panel per sigma: the histogram of each
    config's ratios, as shares of its correctly classified images."""
    mixing = [config for config in configs if config.mixing_ratios]
    panels = _panels(mixing)
    labels = {config.name: f"{config.name} ({len(config.mixing_ratios)} correct, "
                           f"{config.mixing_ratios.count(None)} never changed)" for config in mixing}
    grid = max(config.grid for config in mixing)
    # Ratios are multiples of 1/grid: one bin centred on each.
    edges = [(step - 0.5) / grid for step in range(1, grid + 2)]
    figure, axes_column = sigma_panels([[labels[config.name] for config in panel] for panel in panels.values()])
    for (sigma, panel), axes in zip(panels.items(), axes_column):
        for position, config in enumerate(panel):
            color, _ = _look(position)
            changed = [ratio for ratio in config.mixing_ratios if ratio is not None]
            axes.hist(changed, bins=edges, weights=[1 / len(config.mixing_ratios)] * len(changed),
                      histtype="stepfilled", alpha=0.4, color=color, edgecolor=color, label=labels[config.name])
        axes.set_xlabel("equal-confidence mixing ratio λ")
        axes.set_ylabel("share of correctly classified images")
        axes.set_xlim(0, 1 + 0.5 / grid)
        finish_sigma_panel(axes, sigma)
    figure.suptitle(f"{experiment}: equal-confidence mixing ratios (Figure 3)")
    return figure


def _analyses(session: Session, experiment: str) -> list[ConfigAnalysis]:
    require_experiment(session, experiment)
    return analyses_of(session, experiment)


def _analysed_config(analysis: ConfigAnalysis) -> AnalysedConfig:
    return AnalysedConfig(name=analysis.config_name, sigma=analysis.settings["sigma"],
                          confidence=_confidence_means(analysis),
                          mixing_ratios=[row.mixing_ratio for row in _rows_of(analysis, "mixing_ratio")],
                          grid=analysis.settings["grid"])


def _panels(configs: list[AnalysedConfig]) -> dict[float, list[AnalysedConfig]]:
    """The configs by sigma, the smallest first, each sigma's in the order of their names (as a reader orders
    them): results at different noise levels are not comparable, and a sweep's configs, named alike in every
    panel, then take the same place and colour in each."""
    panels: dict[float, list[AnalysedConfig]] = {}
    for config in sorted(configs, key=lambda config: (config.sigma, natural_order(config.name))):
        panels.setdefault(config.sigma, []).append(config)
    return panels


def _look(position: int) -> tuple[str, str]:
    """The colour and marker of a panel's config at `position`: after matplotlib's ten colours, the next marker."""
    return f"C{position % 10}", ANALYSIS_MARKERS[position // 10 % len(ANALYSIS_MARKERS)]


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
