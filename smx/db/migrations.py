"""Upgrades of an older store schema, one step per version.

Each step takes a connection inside the upgrade's transaction and turns schema version v into v + 1.
New tables need no step (they are created from the models); changed or renamed columns do.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, inspect, text

from smx.db.models import SCHEMA_VERSION, AnalysisResult, Certificate
from smx.errors import UserError


def add_analysis_results(connection: Connection) -> None:
    """Version 2 stores the results of analyze jobs."""
    AnalysisResult.__table__.create(connection, checkfirst=True)


def add_curve_index(connection: Connection) -> None:
    """Version 3 indexes certificates for certified-accuracy curves."""
    for index in Certificate.__table__.indexes:
        index.create(connection, checkfirst=True)


def add_slurm_job_id(connection: Connection) -> None:
    """Version 4 records the Slurm job that runs a job sent to Slurm."""
    if "slurm_job_id" not in {column["name"] for column in inspect(connection).get_columns("jobs")}:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN slurm_job_id VARCHAR(64)"))


def add_attempt_start_progress(connection: Connection) -> None:
    """Version 5 records where a job's current attempt started, for its ETA."""
    if "attempt_start_progress" not in {column["name"] for column in inspect(connection).get_columns("jobs")}:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN attempt_start_progress FLOAT"))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: add_analysis_results, 2: add_curve_index, 3: add_slurm_job_id, 4: add_attempt_start_progress,
}


def migrate(connection: Connection, from_version: int) -> None:
    for version in range(from_version, SCHEMA_VERSION):
        step = MIGRATIONS.get(version)
        if step is None:
            raise UserError(
                f"the store has schema version {from_version} and smx has no upgrade from version {version}.\n"
                "Fix: export what you need with `smx query`, then start a new store."
            )
        step(connection)
