"""The clock offset: measured before any time-based decision, from the fastest of a few round trips."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import OrgJob
from pymongo.errors import AutoReconnect

from mongo_job_queue import QueueConfig
from mongo_job_queue.store import JobStore

SERVER = datetime(2024, 1, 1, 12, 0, 0)
AHEAD = timedelta(minutes=5)


class FakeServer:
    """Stands in for ``hello``: answers with SERVER time, each sample taking its scripted round trip."""

    def __init__(self, store: JobStore, round_trips: Iterator[float] | None = None) -> None:
        self.mono = 0.0
        self.round_trips = round_trips
        self.calls = 0
        self.errors: list[BaseException] = []
        self.server_times: list[datetime] = []
        store._hello = self.hello  # type: ignore[method-assign]
        store._monotonic = lambda: self.mono  # type: ignore[method-assign]

    def hello(self) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.mono += next(self.round_trips) if self.round_trips else 0.001
        return {"localTime": self.server_times.pop(0) if self.server_times else SERVER}


def make_store(**config: Any) -> JobStore:
    # The local clock runs five minutes ahead of the server's and stands still.
    return JobStore(OrgJob, QueueConfig(**config), clock=lambda: SERVER + AHEAD)


# Concurrent callers of now() during the first measurement: tests/integration/test_clock_first_sync.py.


def test_the_first_measurement_failing_fails_now_and_is_tried_again() -> None:
    store = make_store()
    server = FakeServer(store)
    server.errors.append(AutoReconnect("down"))
    with pytest.raises(AutoReconnect):
        store.now()
    assert store.now() == SERVER


def test_the_fastest_of_a_few_samples_is_used() -> None:
    store = make_store()
    # A slow sample whose server time was read late, then a fast accurate one, then a middling one.
    server = FakeServer(store, iter([0.4, 0.002, 0.1]))
    server.server_times = [SERVER + timedelta(seconds=30), SERVER, SERVER + timedelta(seconds=3)]
    assert store.now() == SERVER
    assert store.clock_offset == -AHEAD
    assert server.calls == 3


def test_a_resync_over_slow_round_trips_keeps_the_measured_offset() -> None:
    store = make_store(clock_sync_interval_ms=1_000)
    server = FakeServer(store, iter([0.001] * 3 + [2.0] * 3))
    assert store.now() == SERVER
    server.server_times = [SERVER + timedelta(minutes=1)] * 3  # would be wrong by a minute
    server.mono += 5  # past the sync interval
    assert store.now() == SERVER
    assert server.calls == 6


def test_a_first_measurement_over_a_slow_link_is_still_used(caplog: pytest.LogCaptureFixture) -> None:
    store = make_store()
    FakeServer(store, iter([2.0, 2.0, 2.0]))
    assert store.now() == SERVER
    assert "slow round trip" in caplog.text


def test_without_sync_clock_nothing_is_measured() -> None:
    store = make_store(sync_clock=False)
    server = FakeServer(store)
    assert store.now() == SERVER + AHEAD
    assert server.calls == 0


def test_a_server_that_cannot_answer_hello_leaves_the_clock_uncorrected(caplog: pytest.LogCaptureFixture) -> None:
    # mongomock raises NotImplementedError for hello; the app's own tests run on it with the default config.
    store = make_store()
    assert store.now() == SERVER + AHEAD
    assert "cannot measure the clock offset" in caplog.text
    assert store.now() == SERVER + AHEAD
