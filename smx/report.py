"""Results out of the store: tables in CSV / JSON / Markdown and certified-accuracy plots as PNG."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from smx.db.models import Certificate
from smx.db.queries import aggregates_of
from smx.db.readonly import QueryResult, run_query
from smx.db.store import Store
from smx.errors import UserError
from smx.science.metrics import certified_accuracy

FORMATS = ("table", "csv", "json", "md")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"
    return str(value)


def to_csv(result: QueryResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return buffer.getvalue()


def to_json(result: QueryResult) -> str:
    return json.dumps([dict(zip(result.columns, row)) for row in result.rows], indent=2, default=str) + "\n"


def to_markdown(result: QueryResult) -> str:
    lines = ["| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns)]
    lines += ["| " + " | ".join(_cell(value).replace("|", "\\|") for value in row) + " |" for row in result.rows]
    return "\n".join(lines) + "\n"


def render(result: QueryResult, format: str) -> str:
    return {"csv": to_csv, "json": to_json, "md": to_markdown}[format](result)


def experiment_results(store: Store, experiment: str) -> QueryResult:
    """The experiment's `results` rows, with each swept hyperparameter in a column of its own."""
    result = run_query(store, "SELECT * FROM results WHERE experiment = :experiment ORDER BY config",
                       {"experiment": experiment})
    if not result.rows:
        known = run_query(store, "SELECT name FROM experiments ORDER BY name")
        if experiment not in [row[0] for row in known.rows]:
            names = ", ".join(row[0] for row in known.rows) or "none yet"
            raise UserError(f"no experiment named {experiment!r} in the store (known: {names}).")
    position = result.columns.index("hyperparams")
    swept_rows = [json.loads(row[position]) if isinstance(row[position], str) else (row[position] or {})
                  for row in result.rows]
    swept_columns = sorted({key for swept in swept_rows for key in swept})
    columns = result.columns[:position] + swept_columns + result.columns[position + 1:]
    rows = [
        tuple(row[:position]) + tuple(swept.get(key) for key in swept_columns) + tuple(row[position + 1:])
        for row, swept in zip(result.rows, swept_rows)
    ]
    return QueryResult(columns, rows)


def plot_experiment(store: Store, experiment: str, out: Path) -> Path:
    """Certified accuracy against radius for every config of an experiment, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with store.read_session() as session:
        aggregates = aggregates_of(session, experiment)
        if not aggregates:
            raise UserError(f"experiment {experiment!r} has no results yet.\n"
                            "Fix: wait for its jobs (`smx status`) or submit it with `smx submit`.")
        curves = []
        for aggregate in aggregates:
            rows = session.execute(select(Certificate.radius, Certificate.correct)
                                   .where(Certificate.job_key == aggregate.certify_key)).all()
            curves.append((aggregate, [radius for radius, _ in rows], [correct for _, correct in rows]))
    max_radius = max((max(radii, default=0.0) for _, radii, _ in curves), default=1.0)
    grid = [max_radius * 1.05 * step / 400 for step in range(401)]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for aggregate, radii, correct in curves:
        axes.plot(grid, [certified_accuracy(radii, correct, level) for level in grid],
                  label=f"{aggregate.config_name} (ACR {aggregate.acr:.3f})")
    axes.set_xlabel("radius (L2)")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.set_title(f"{experiment}: approximate certified accuracy")
    axes.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
