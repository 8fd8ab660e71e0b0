"""SQL views for users: `results` has one row per certified config of each experiment's current plan."""

from __future__ import annotations

from sqlalchemy import Connection, text

from smx.science.metrics import DEFAULT_RADII


def radius_column(radius: float) -> str:
    """Column name of certified accuracy at a radius: 0.25 -> acc_0_25, 0.125 -> acc_0_125 (two decimals at
    least, more where the radius has them)."""
    decimals = f"{radius:.6f}".rstrip("0")
    return "acc_" + (decimals + "0" * (2 - len(decimals.partition(".")[2]))).replace(".", "_")


def results_view_sql() -> str:
    radius_columns = ",\n  ".join(
        f"MAX(CASE WHEN ABS(c.radius - {radius!r}) < 1e-9 THEN c.accuracy END) AS {radius_column(radius)}"
        for radius in DEFAULT_RADII
    )
    # Only aggregates of an experiment's current plan: an edited spec's old rows stay but are not shown.
    return f"""
CREATE VIEW results AS
SELECT
  a.experiment AS experiment,
  a.config_name AS config,
  a.method AS method,
  a.sigma AS sigma,
  a.hyperparams AS hyperparams,
  a.acr AS acr,
  a.clean_accuracy AS clean_accuracy,
  a.abstain_rate AS abstain_rate,
  a.num_samples AS num_samples,
  {radius_columns},
  a.certify_key AS certify_key
FROM aggregates a
JOIN experiments e ON e.name = a.experiment
JOIN experiment_jobs ej ON ej.experiment_id = e.id AND ej.job_key = a.job_key
LEFT JOIN certified_accuracy c ON c.aggregate_id = a.id
GROUP BY a.id
"""


def create_views(connection: Connection) -> None:
    # Views carry no data, so they are always rebuilt: a new smx version may add columns.
    connection.execute(text("DROP VIEW IF EXISTS results"))
    connection.execute(text(results_view_sql()))
