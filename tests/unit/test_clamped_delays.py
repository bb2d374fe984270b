"""Computed delays are clamped; times never overflow."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mongo_job_queue.clock import MAX_DURATION_MS, after_ms
from mongo_job_queue.retry import clamp_delay_ms

START = datetime(2024, 1, 1)


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (10**400, MAX_DURATION_MS),
        (float("inf"), MAX_DURATION_MS),
        (1e16, MAX_DURATION_MS),
        (-5, 0),
        (-float("inf"), 0),
        (1234.9, 1234),
    ],
)
def test_clamp_delay_ms(ms: float, expected: int) -> None:
    assert clamp_delay_ms(ms) == expected


def test_clamp_delay_ms_refuses_nan() -> None:
    with pytest.raises(ValueError):
        clamp_delay_ms(float("nan"))


def test_after_ms_clamps_instead_of_overflowing() -> None:
    assert after_ms(START, 10**16) == START + timedelta(milliseconds=MAX_DURATION_MS)
    assert after_ms(START, -(10**16)) == START - timedelta(milliseconds=MAX_DURATION_MS)
    assert after_ms(datetime(9990, 1, 1), MAX_DURATION_MS).year == 9999
    assert after_ms(datetime(10, 1, 1), -MAX_DURATION_MS) == datetime.min
    assert after_ms(START, 1500) == START + timedelta(seconds=1.5)
