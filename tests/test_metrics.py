"""Metrics and the certification log format, checked against the authors' published MNIST logs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from smx.errors import UserError
from smx.science.metrics import (
    DEFAULT_RADII,
    CertificationLogError,
    LogRow,
    average_certified_radius,
    certified_accuracy,
    certified_accuracy_curve,
    read_certification_log,
    summarize,
    write_certification_log,
)

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures" / "cohen-format-logs"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"the authors' certification logs are expected in {FIXTURES}"
)


@dataclass(frozen=True)
class PublishedLog:
    file: str
    abstentions: int
    acr: float  # recomputed from the log's 10,000 rows
    certified_accuracy: dict[float, float]  # percent, recomputed from the log
    published_acr: float  # the paper's Table 2 (smx/reference_data/paper_tables.json)
    published_certified_accuracy: dict[float, float]  # percent, paper Table 2


# The logs do not reproduce the notes to the precision one might hope for: the Gaussian log gives
# ACR 1.5596 where Table 2 says 1.553, and certified accuracy at r = 0.5 of 97.01% where it says 96.8%;
# the SmoothMix log gives 1.7851 where the ablations say 1.789 (1.785 is the note's (alpha, T) = (8, 1)
# figure). The tolerances below cover these gaps and no more.
PUBLISHED_ACR_TOLERANCE = 0.007
PUBLISHED_ACCURACY_TOLERANCE = 0.25  # percentage points

LOGS = [
    PublishedLog(
        file="mnist_gaussian_sigma0.50.tsv",
        abstentions=23,
        acr=1.560,
        certified_accuracy={0.0: 99.14, 0.5: 97.01, 1.0: 89.83},
        published_acr=1.553,
        published_certified_accuracy={0.0: 99.2, 0.5: 96.8, 1.0: 89.7},
    ),
    PublishedLog(
        file="mnist_smoothmix_eta1_sigma1.00.tsv",
        abstentions=301,
        acr=1.785,
        certified_accuracy={0.0: 95.41, 0.5: 90.40, 1.0: 80.53},
        published_acr=1.789,
        published_certified_accuracy={0.0: 95.5, 0.5: 90.5, 1.0: 80.6},
    ),
]


@needs_fixtures
@pytest.mark.parametrize("log", LOGS, ids=[log.file for log in LOGS])
def test_published_logs_give_the_published_numbers(log):
    rows = read_certification_log(FIXTURES / log.file)
    assert [row.index for row in rows] == list(range(10_000))

    summary = summarize([row.radius for row in rows], [row.correct for row in rows], [row.prediction for row in rows])

    assert summary.num_samples == 10_000
    assert summary.abstain_rate == log.abstentions / 10_000
    assert round(summary.acr, 3) == log.acr
    assert summary.acr == pytest.approx(log.published_acr, abs=PUBLISHED_ACR_TOLERANCE)
    assert summary.clean_accuracy == summary.certified_accuracy[0.0]
    for radius, percent in log.certified_accuracy.items():
        assert round(100 * summary.certified_accuracy[radius], 2) == percent
        published = log.published_certified_accuracy[radius]
        assert 100 * summary.certified_accuracy[radius] == pytest.approx(published, abs=PUBLISHED_ACCURACY_TOLERANCE)


@needs_fixtures
@pytest.mark.parametrize("log", LOGS, ids=[log.file for log in LOGS])
def test_published_logs_are_rewritten_byte_for_byte(log, tmp_path):
    original = FIXTURES / log.file
    copy = tmp_path / log.file
    write_certification_log(copy, read_certification_log(original))
    assert copy.read_bytes() == original.read_bytes()


def test_metrics_on_a_small_example():
    radii = [1.0, 2.0, 0.0, 3.0]
    correct = [1, 0, 0, 1]
    assert average_certified_radius(radii, correct) == 1.0
    assert certified_accuracy(radii, correct, 0.0) == 0.5
    assert certified_accuracy(radii, correct, 1.0) == 0.5  # a radius equal to r counts
    assert certified_accuracy(radii, correct, 1.5) == 0.25
    assert certified_accuracy(radii, correct, 3.01) == 0.0

    summary = summarize(radii, correct, [4, 1, -1, 7], radius_grid=(0.0, 2.0))
    assert summary.num_samples == 4
    assert summary.acr == 1.0
    assert summary.clean_accuracy == 0.5
    assert summary.abstain_rate == 0.25
    assert summary.certified_accuracy == {0.0: 0.5, 2.0: 0.25}


def test_a_curve_counts_what_the_definition_counts_at_every_level():
    generator = np.random.default_rng(0)
    # Radii rounded to two decimals, as published logs have them, so that many samples tie with a level.
    radii = np.round(generator.uniform(0, 2, 5000), 2)
    correct = (generator.uniform(size=5000) < 0.8).astype(np.int64)
    radii[correct == 0] = 0.0
    levels = [0.0, *np.round(np.linspace(0, 2.2, 221), 2), 0.5, 5.0]
    curve = certified_accuracy_curve(radii, correct, levels)
    assert curve == [float(np.mean((correct == 1) & (radii >= level))) for level in levels]
    assert curve[0] == np.mean(correct) and curve[-1] == 0.0


def test_default_radii():
    assert DEFAULT_RADII == (
        0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0
    )
    summary = summarize([0.3], [1], [2])
    assert list(summary.certified_accuracy) == list(DEFAULT_RADII)


@pytest.mark.parametrize("radii, correct", [([], []), ([1.0, 2.0], [1])])
def test_metrics_reject_empty_or_mismatched_inputs(radii, correct):
    with pytest.raises(ValueError):
        average_certified_radius(radii, correct)


def test_log_round_trip(tmp_path):
    rows = [
        LogRow(index=0, label=7, prediction=7, radius=1.91, correct=1, seconds=0.298455),
        LogRow(index=1, label=2, prediction=-1, radius=0.0, correct=0, seconds=0.0),
        LogRow(index=5, label=3, prediction=3, radius=0.123456789012345, correct=1, seconds=3723.000001),
        LogRow(index=9, label=1, prediction=8, radius=2.5e-05, correct=0, seconds=90_000.5),
    ]
    path = tmp_path / "certify.tsv"
    write_certification_log(path, rows)
    assert path.read_text().splitlines() == [
        "idx\tlabel\tpredict\tradius\tcorrect\ttime",
        "0\t7\t7\t1.91\t1\t0:00:00.298455",
        "1\t2\t-1\t0.0\t0\t0:00:00",
        "5\t3\t3\t0.123456789012345\t1\t1:02:03.000001",
        "9\t1\t8\t2.5e-05\t0\t1 day, 1:00:00.500000",
    ]
    assert read_certification_log(path) == rows


def test_blank_lines_at_the_end_of_a_log_are_not_rows(tmp_path):
    path = tmp_path / "certify.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\r\n0\t7\t7\t1.91\t1\t0:00:00.298455\r\n\r\n\n")
    assert read_certification_log(path) == [LogRow(0, 7, 7, 1.91, 1, 0.298455)]


@pytest.mark.parametrize(
    "text, bad_line",
    [
        ("", 1),
        ("idx,label,predict,radius,correct,time\n", 1),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.91\t1\n", 2),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.91\t1\t0:00:00.300000\n"
            "1\tseven\t7\t1.9\t1\t0:00:00.300000\n",
            3,
        ),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.91\t2\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\tnan\t1\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.91\t1\t0.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t-1\t0.5\t1\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t-1\t0.5\t0\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t3\t1.91\t1\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.91\t0\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n-5\t7\t7\t1.91\t1\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "9" * 23 + "\t7\t7\t1.91\t1\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t-3\t-3\t1.91\t1\t0:00:00.298455\n", 2),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.91\t1\t0:00:00.298455\n\n"
         "1\t7\t7\t1.91\t1\t0:00:00.298455\n", 3),
    ],
    ids=[
        "empty", "not-tab-separated", "missing-field", "text-label", "bad-correct", "nan-radius", "bad-time",
        "abstention-marked-correct", "abstention-with-radius", "wrong-marked-correct", "right-marked-wrong",
        "negative-index", "index-beyond-64-bits", "negative-label", "blank-line-between-rows",
    ],
)
def test_malformed_logs_name_the_file_and_line(tmp_path, text, bad_line):
    path = tmp_path / "broken.tsv"
    path.write_text(text)
    with pytest.raises(CertificationLogError) as raised:
        read_certification_log(path)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, UserError)
    assert str(path) in str(raised.value) and f"line {bad_line}:" in str(raised.value)


@pytest.mark.parametrize(("row", "named"), [
    ("0\tseven\t7\t1.91\t1\t0:00:00.3", "label must be a whole number, not 'seven'"),
    ("0\t7\t7\tfar\t1\t0:00:00.3", "radius must be a finite number >= 0, not 'far'"),
    ("0\t7\t7\t1.91\tyes\t0:00:00.3", "correct must be a whole number, not 'yes'"),
])
def test_a_field_that_is_no_number_is_named_by_its_column(tmp_path, row: str, named: str) -> None:
    path = tmp_path / "broken.tsv"
    path.write_text(f"idx\tlabel\tpredict\tradius\tcorrect\ttime\n{row}\n")
    with pytest.raises(CertificationLogError, match=f"line 2: {named}"):
        read_certification_log(path)
