"""Certification metrics and the field's certification log format. Torch-free.

Certified accuracy at r is the fraction of test images that CERTIFY classifies correctly with a certified
radius >= r; abstentions and wrong answers count as 0. ACR is the mean over all images of radius * correct.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from smx.errors import UserError
from smx.paths import written_whole

# The paper's tables' grid; 4.0 is past what MNIST at sigma 1.0 certifies with n = 100,000 (about 3.8).
DEFAULT_RADII: tuple[float, ...] = tuple(0.25 * step for step in range(17))
# Summaries are computed and stored at radii rounded to this many decimals: 0.1 * 3 and 0.3 are one radius.
RADIUS_DECIMALS = 6

# The prediction CERTIFY and PREDICT report, and certification logs record, when they abstain.
ABSTAIN = -1
LOG_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
LOG_HEADER = "\t".join(LOG_COLUMNS)
# str(datetime.timedelta): "[D day[s], ]H:MM:SS[.ffffff]"; the microseconds are left out when they are 0.
_TIME_PATTERN = re.compile(r"(?:(\d+) days?, )?(\d+):([0-5]\d):([0-5]\d)(?:\.(\d{6}))?")


class CertificationLogError(UserError, ValueError):
    """A certification log that is not in the field's TSV format."""


@dataclass
class Summary:
    num_samples: int
    acr: float
    clean_accuracy: float  # fraction of images CERTIFY classifies correctly, at any radius
    abstain_rate: float
    certified_accuracy: dict[float, float]  # radius -> fraction correct with at least that radius


@dataclass
class LogRow:
    """One row of a certification log."""

    index: int
    label: int
    prediction: int  # -1 on abstain
    radius: float
    correct: int
    seconds: float


@dataclass(frozen=True)
class Outcomes:
    """Certificates as columns, in the order of their samples: what a summary reads of them."""

    radii: np.ndarray  # float64
    correct: np.ndarray  # int64, 1 or 0
    predictions: np.ndarray  # int64, ABSTAIN on abstain

    @classmethod
    def of_rows(cls, rows: Sequence[LogRow]) -> Outcomes:
        return cls(np.array([row.radius for row in rows], dtype=np.float64),
                   np.array([row.correct for row in rows], dtype=np.int64),
                   np.array([row.prediction for row in rows], dtype=np.int64))


def average_certified_radius(radii: Sequence[float] | np.ndarray, correct: Sequence[int] | np.ndarray) -> float:
    """Mean over all samples of radius * correct (ACR)."""
    radii_array, correct_array = _as_arrays(radii, correct)
    return float(np.mean(radii_array * correct_array))


def certified_accuracy(
    radii: Sequence[float] | np.ndarray, correct: Sequence[int] | np.ndarray, radius: float
) -> float:
    """Fraction of samples classified correctly with a certified radius of at least `radius`."""
    return certified_accuracy_curve(radii, correct, [radius])[0]


def certified_accuracy_curve(
    radii: Sequence[float] | np.ndarray, correct: Sequence[int] | np.ndarray, levels: Iterable[float]
) -> list[float]:
    """Certified accuracy at each of `levels`, from one sort: a plot's 400 levels over 10,000 samples cost one
    pass over the samples, not 400."""
    radii_array, correct_array = _as_arrays(radii, correct)
    certified_radii = np.sort(radii_array[correct_array == 1])
    # Certified with at least `level`: the correct samples that do not sort before it.
    counts = certified_radii.size - np.searchsorted(certified_radii, np.asarray(list(levels), dtype=np.float64))
    return [float(count / radii_array.size) for count in counts]


def summarize(
    radii: Sequence[float] | np.ndarray,
    correct: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    radius_grid: Iterable[float] = DEFAULT_RADII,
) -> Summary:
    """ACR, clean accuracy, abstain rate and certified accuracy at each radius of the grid."""
    radii_array, correct_array = _as_arrays(radii, correct)
    grid = [float(radius) for radius in radius_grid]
    predictions_array = np.asarray(predictions)
    if predictions_array.shape != radii_array.shape:
        raise ValueError(f"predictions of shape {predictions_array.shape} for radii of shape {radii_array.shape}")
    return Summary(
        num_samples=int(radii_array.size),
        acr=average_certified_radius(radii_array, correct_array),
        clean_accuracy=float(np.mean(correct_array == 1)),
        abstain_rate=float(np.mean(predictions_array == ABSTAIN)),
        certified_accuracy=dict(zip(grid, certified_accuracy_curve(radii_array, correct_array, grid))),
    )


def read_certification_log(path: str | os.PathLike[str]) -> list[LogRow]:
    """Rows of a TSV certification log (header `idx label predict radius correct time`)."""
    with open(path, encoding="utf-8") as log:
        # Blank lines at the end are an editor's, not rows.
        lines = log.read().rstrip("\r\n").splitlines()
    if not lines or lines[0] != LOG_HEADER:
        found = repr(lines[0]) if lines else "an empty file"
        raise CertificationLogError(
            f"{path}, line 1: expected the header {LOG_HEADER!r}, found {found}. "
            "Pass a certification log in the field's tab-separated format."
        )
    return [_parse_row(line, path, line_number) for line_number, line in enumerate(lines[1:], start=2)]


def write_certification_log(path: str | os.PathLike[str], rows: Iterable[LogRow]) -> None:
    """Writes rows in the field's TSV format; radii keep full precision, times have microsecond resolution.

    The file is whole or absent: it is written beside `path` under a hidden name and renamed when complete, so
    an error or a kill midway never leaves a log that reads as a shorter certification.
    """
    # "x": the partial file is this writer's alone; unlike mkstemp's, it gets the permissions any other file here would.
    with written_whole(Path(path)) as partial, open(partial, "x", encoding="utf-8", newline="\n") as log:
        log.write(LOG_HEADER + "\n")
        for row in rows:
            elapsed = timedelta(seconds=row.seconds)
            fields = (row.index, row.label, row.prediction, float(row.radius), row.correct, elapsed)
            log.write("\t".join(str(field) for field in fields) + "\n")


def _whole_number(field: str, column: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise ValueError(f"{column} must be a whole number, not {field!r}") from None


def _parse_row(line: str, path: str | os.PathLike[str], line_number: int) -> LogRow:
    fields = line.split("\t")
    try:
        if len(fields) != len(LOG_COLUMNS):
            raise ValueError(f"{len(fields)} tab-separated fields instead of {len(LOG_COLUMNS)}")
        index, label, prediction, correct = (_whole_number(fields[position], LOG_COLUMNS[position])
                                             for position in (0, 1, 2, 4))
        # A store keeps indices as 64-bit integers.
        if not 0 <= index < 2**63:
            raise ValueError(f"idx must be a sample index, from 0 to 2**63 - 1, not {fields[0]}")
        if label < 0 or prediction < ABSTAIN:
            raise ValueError(f"label must be a class >= 0 and predict a class or -1, not {label} and {prediction}")
        try:
            radius = float(fields[3])
        except ValueError:
            radius = math.nan  # refused just below, naming the column
        if not math.isfinite(radius) or radius < 0:
            raise ValueError(f"radius must be a finite number >= 0, not {fields[3]!r}")
        if correct not in (0, 1):
            raise ValueError(f"correct must be 0 or 1, not {correct}")
        # ACR and certified accuracy trust `correct`, so it must agree with the prediction it summarises.
        if prediction == ABSTAIN and (correct != 0 or radius != 0):
            raise ValueError(f"an abstention (predict -1) has correct 0 and radius 0.0, not {correct} and {fields[3]}")
        if prediction != ABSTAIN and correct != int(prediction == label):
            raise ValueError(
                f"correct is {correct} but predict {prediction} and label {label} say {int(prediction == label)}"
            )
        time_match = _TIME_PATTERN.fullmatch(fields[5])
        if time_match is None:
            raise ValueError(f"time {fields[5]!r} is not H:MM:SS.ffffff")
    except ValueError as problem:
        raise CertificationLogError(
            f"{path}, line {line_number}: {problem}. Expected `idx label predict radius correct time`, "
            "e.g. '0\\t7\\t7\\t1.91\\t1\\t0:00:00.298455'."
        ) from None
    days, hours, minutes, seconds, microseconds = (int(part or 0) for part in time_match.groups())
    elapsed = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, microseconds=microseconds)
    return LogRow(index, label, prediction, radius, correct, elapsed.total_seconds())


def _as_arrays(
    radii: Sequence[float] | np.ndarray, correct: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    radii_array = np.asarray(radii, dtype=np.float64)
    correct_array = np.asarray(correct, dtype=np.int64)
    if radii_array.ndim != 1 or radii_array.shape != correct_array.shape or radii_array.size == 0:
        raise ValueError(
            "radii and correct must be non-empty 1-D arrays of one length, "
            f"got shapes {radii_array.shape} and {correct_array.shape}"
        )
    return radii_array, correct_array
