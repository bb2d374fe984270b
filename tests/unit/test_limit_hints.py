"""The pure side of limit hints: the default asks nothing, and a rate's next start is a lower bound."""

from __future__ import annotations

from datetime import datetime, timedelta

from mongo_job_queue.limits import Limit
from mongo_job_queue.store.limit_hints import NO_HINTS, next_open

NOW = datetime(2030, 1, 1)


def test_no_hints_know_nothing_and_keep_nothing() -> None:
    NO_HINTS.saw_full(["a"], NOW)
    NO_HINTS.saw_rate("a", NOW + timedelta(seconds=1), NOW)
    NO_HINTS.freed(["a"], NOW)
    assert NO_HINTS.look(["a"], NOW) == {}


def test_a_rate_opens_one_interval_after_a_start_at_the_earliest_and_a_burst_tells_nothing() -> None:
    start = NOW + timedelta(milliseconds=7)
    opens = next_open(Limit.build("api", rate="5/s"), start)
    assert opens is not None and start + timedelta(milliseconds=198) <= opens < start + timedelta(milliseconds=200)
    assert next_open(Limit.build("api", rate="5/s", burst=3), start) is None  # may open at once
    assert next_open(Limit.build("cap", max_running=2), start) is None
