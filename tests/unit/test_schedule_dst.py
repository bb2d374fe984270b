"""Cron schedules across DST transitions, driven the way the scheduler thread drives them.

The injected clock steps minute by minute through each transition; wherever
the thread would wake (the time its last :meth:`Scheduler.step` returned), the
test runs that step, and every job stored is collected. The expected fire
times come from an oracle independent of cronsim: an expression with a
wildcard or step (``*/30``, ``0-59/30``) in its minute or hour field fires at every real instant
whose local wall time matches it, so both times through the hour repeated in
autumn and never in the hour skipped in spring. Zones: whole-hour shifts in
both hemispheres, Dublin's negative DST, and Lord_Howe's 30-minute shift.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import raw_docs

MINUTE = timedelta(minutes=1)

# (zone, the UTC instant its offset changes in 2026)
TRANSITIONS = [
    ("Europe/Paris", datetime(2026, 10, 25, 1)),
    ("Europe/Paris", datetime(2026, 3, 29, 1)),
    ("America/New_York", datetime(2026, 11, 1, 6)),
    ("America/New_York", datetime(2026, 3, 8, 7)),
    ("Australia/Sydney", datetime(2026, 4, 4, 16)),
    ("Australia/Sydney", datetime(2026, 10, 3, 16)),
    ("Europe/Dublin", datetime(2026, 10, 25, 1)),
    ("Europe/Dublin", datetime(2026, 3, 29, 1)),
    ("Australia/Lord_Howe", datetime(2026, 4, 4, 15)),  # 02:00 +11:00 back to 01:30 +10:30
    ("Australia/Lord_Howe", datetime(2026, 10, 3, 15, 30)),  # 02:00 +10:30 on to 02:30 +11:00
]
REAL_TIME = [
    "*/30 * * * *",
    "0 * * * *",
    "15,45 * * * *",
    "0 */2 * * *",
    "*/20 1-3 * * *",
    # Steps written over a range are steps too (they were iterated as fixed local times).
    "0-59/30 1 * * *",
    "0 0-23/1 * * *",
    "0 0-23/2 * * *",
    "0-30/15 1-3 * * *",
    "0,30 0-23/3 * * *",
]


def local(moment: datetime, zone: str) -> datetime:
    return moment.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(zone))


def values(field: str, top: int) -> set[int]:
    found: set[int] = set()
    for part in field.split(","):
        part, _, step = part.partition("/")
        low, high = (0, top) if part == "*" else (int(part.split("-")[0]), int(part.split("-")[-1]))
        found |= set(range(low, high + 1, int(step or 1)))
    return found


def oracle(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every minute in ``(start, end]`` whose wall time in ``zone`` matches the minute and hour fields."""
    minutes, hours = values(expression.split()[0], 59), values(expression.split()[1], 23)
    moments = (start + i * MINUTE for i in range(1, (end - start) // MINUTE + 1))
    return [m for m in moments if local(m, zone).minute in minutes and local(m, zone).hour in hours]


def run_scheduler(queue: Any, clock: Any, start: datetime, end: datetime) -> list[datetime]:
    """Step the clock minute by minute, running the scheduler's step where its thread would; the fired jobs."""
    queue.ensure_indexes()
    due_at = None
    clock.now = start
    while clock.now <= end:
        now = queue.store.now()
        if due_at is None or now >= due_at:
            due_at = queue.scheduler.step(now)
        clock.advance(seconds=60)
    return [doc["fire_time"] for doc in raw_docs()]


def test_the_transitions_are_where_the_tests_say() -> None:
    for zone, change in TRANSITIONS:
        assert local(change - timedelta(seconds=1), zone).utcoffset() != local(change, zone).utcoffset(), zone


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
@pytest.mark.parametrize("expression", REAL_TIME)
@pytest.mark.parametrize(("zone", "change"), TRANSITIONS, ids=[f"{z}-{c:%m%d}" for z, c in TRANSITIONS])
def test_real_time_expressions_fire_at_every_matching_instant_across_the_transition(
    make_queue: Any, clock: Any, zone: str, change: datetime, expression: str, policy: str
) -> None:
    queue = make_queue()
    queue.schedule("s", expression, "T", timezone=zone, catch_up=policy)
    start, end = change - timedelta(hours=4), change + timedelta(hours=4)
    assert run_scheduler(queue, clock, start, end) == oracle(expression, zone, start, end)
    assert [d["created_at"] for d in raw_docs()] == [d["fire_time"] for d in raw_docs()]  # each on time


def test_the_second_pass_through_the_repeated_hour_fires(make_queue: Any, clock: Any) -> None:
    # The examples of the report: Paris falls back at 01:00 UTC, New York at 06:00 UTC.
    paris, new_york = make_queue(), make_queue()
    paris.schedule("half-hourly", "*/30 * * * *", "T", timezone="Europe/Paris", catch_up="skip")
    fired = run_scheduler(paris, clock, datetime(2026, 10, 24, 23, 45), datetime(2026, 10, 25, 2, 10))
    assert fired == [datetime(2026, 10, 25, 0, 0) + i * timedelta(minutes=30) for i in range(5)]
    assert [local(f, "Europe/Paris").strftime("%H:%M") for f in fired[:4]] == ["02:00", "02:30"] * 2
    paris.store.collection.delete_many({})
    new_york.schedule("hourly", "0 * * * *", "T", timezone="America/New_York")
    fired = run_scheduler(new_york, clock, datetime(2026, 11, 1, 4, 30), datetime(2026, 11, 1, 7, 30))
    assert fired == [datetime(2026, 11, 1, h) for h in (5, 6, 7)]  # 01:00 EDT, 01:00 EST, 02:00 EST


@pytest.mark.parametrize(
    ("zone", "expression", "day", "expected"),
    [
        ("America/New_York", "30 1 * * *", datetime(2026, 11, 1), ["2026-11-01T01:30:00-04:00"]),
        ("America/New_York", "30 2 * * *", datetime(2026, 3, 8), ["2026-03-08T03:00:00-04:00"]),
        ("Europe/Paris", "30 2 * * *", datetime(2026, 10, 25), ["2026-10-25T02:30:00+02:00"]),
        ("Australia/Lord_Howe", "45 1 * * *", datetime(2026, 4, 4), ["2026-04-05T01:45:00+11:00"]),
        ("Australia/Lord_Howe", "15 2 * * *", datetime(2026, 10, 3), ["2026-10-04T02:30:00+11:00"]),
        # Ranges and lists without a step name fixed local times: each once, Debian's rule.
        (
            "America/New_York",
            "0 1-3 * * *",
            datetime(2026, 11, 1),
            ["2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00"],
        ),
        (
            "America/New_York",
            "0 1-3 * * *",
            datetime(2026, 3, 8),
            ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"],
        ),
        (
            "America/New_York",
            "0,30 1 * * *",
            datetime(2026, 11, 1),
            ["2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00"],
        ),
        (
            "Europe/Paris",
            "15 1,2 * * *",
            datetime(2026, 3, 29),
            ["2026-03-29T01:15:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T01:15:00+02:00"],
        ),
    ],
)
def test_a_fixed_local_time_fires_once_on_transition_days(
    make_queue: Any, clock: Any, zone: str, expression: str, day: datetime, expected: list[str]
) -> None:
    queue = make_queue()
    queue.schedule("daily", expression, "T", timezone=zone)
    fired = run_scheduler(queue, clock, day, day + timedelta(days=1))
    assert [local(f, zone).isoformat() for f in fired] == expected


@pytest.mark.parametrize(
    ("zone", "expression", "first_pass", "restart"),
    [
        # Down before the first 01:30, back during the second pass of 01:00-02:00.
        ("America/New_York", "30 1 * * *", datetime(2026, 11, 1, 5, 30), datetime(2026, 11, 1, 6, 15)),
        ("Europe/Paris", "30 2 * * *", datetime(2026, 10, 25, 0, 30), datetime(2026, 10, 25, 1, 5)),
        ("Australia/Lord_Howe", "45 1 * * *", datetime(2026, 4, 4, 14, 45), datetime(2026, 4, 4, 15, 5)),
    ],
)
def test_a_worker_back_during_the_second_pass_catches_up_the_first_passs_fire(
    make_queue: Any, clock: Any, zone: str, expression: str, first_pass: datetime, restart: datetime
) -> None:
    queue = make_queue()
    queue.schedule("daily", expression, "T", timezone=zone)
    run_scheduler(queue, clock, first_pass - timedelta(hours=2), first_pass - timedelta(hours=1))
    assert run_scheduler(queue, clock, restart, restart + timedelta(minutes=5)) == [first_pass]


@pytest.mark.parametrize(("zone", "change"), TRANSITIONS, ids=[f"{z}-{c:%m%d}" for z, c in TRANSITIONS])
def test_catching_up_all_after_an_outage_across_the_transition_enqueues_each_fire_time_once(
    make_queue: Any, clock: Any, zone: str, change: datetime
) -> None:
    queue = make_queue()
    queue.schedule("s", "45 * * * *", "T", timezone=zone, catch_up="all")
    start, back = change - timedelta(hours=4), change + timedelta(hours=3, minutes=50)
    run_scheduler(queue, clock, start, start)  # first sight; then nothing runs until ``back``
    assert run_scheduler(queue, clock, back, back) == oracle("45 * * * *", zone, start, back)


FALL_AND_SPRING = [t for t in TRANSITIONS if t[0] in ("Europe/Paris", "Australia/Lord_Howe")]


@pytest.mark.parametrize(("zone", "change"), FALL_AND_SPRING)
def test_fire_schedules_called_every_minute_agrees_with_the_oracle(
    make_queue: Any, clock: Any, zone: str, change: datetime
) -> None:
    queue = make_queue()
    queue.schedule("s", "*/15 * * * *", "T", timezone=zone)
    start = change - timedelta(hours=2)
    for minute in range(4 * 60 + 1):
        queue.fire_schedules(start + minute * MINUTE)
    assert [d["fire_time"] for d in raw_docs()] == oracle("*/15 * * * *", zone, start, start + 4 * 60 * MINUTE)
