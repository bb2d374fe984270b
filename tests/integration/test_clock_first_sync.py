"""A worker whose clock runs ahead makes no time-based decision before its first clock measurement."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration


def test_a_claim_during_the_first_clock_measurement_waits_for_it(make_queue, job_model) -> None:
    web = make_queue()  # a process with a correct clock
    job = web.enqueue("DELAYED", {}, delay_ms=60_000)
    worker = make_queue(clock=lambda: utcnow() + timedelta(minutes=5))
    ran = []
    worker.register_handler("DELAYED", lambda j: ran.append(j.id))

    # Hold the worker's first hello on a gate, as a slow first round trip would.
    gate, entered = threading.Event(), threading.Event()
    real_hello = worker.store._hello

    def gated_hello() -> Any:
        entered.set()
        assert gate.wait(30), "gate never opened"
        return real_hello()

    worker.store._hello = gated_hello
    first = threading.Thread(target=worker.store.now, daemon=True)
    first.start()
    assert entered.wait(10)
    starter = threading.Thread(target=worker.start_polling, daemon=True)
    starter.start()
    starter.join(10)
    try:
        holds_for(lambda: not ran, 1.5, what="no job claimed while the first clock sync is in flight")
    finally:
        gate.set()
    first.join(10)
    wait_until(lambda: worker.store.clock_offset < timedelta(minutes=-4), timeout=10)
    holds_for(lambda: not ran, 1.0, what="the delayed job is not due by the server's clock")
    assert job_model.objects.get(id=job.id).status == "pending"


def test_threads_calling_now_during_the_first_measurement_wait_for_it(make_queue) -> None:
    # Moved from tests/unit (the in-memory mock is not safe for concurrent use): the real hello, held on a gate.
    store = make_queue(clock=lambda: utcnow() + timedelta(minutes=5)).store
    gate, entered = threading.Event(), threading.Event()
    real_hello = store._hello

    def gated_hello() -> Any:
        entered.set()
        assert gate.wait(30), "gate never opened"
        return real_hello()

    store._hello = gated_hello
    seen: dict[str, Any] = {}
    measuring = threading.Thread(target=lambda: seen.setdefault("first", store.now()), daemon=True)
    measuring.start()
    assert entered.wait(10)
    waiting = threading.Thread(target=lambda: seen.setdefault("other", store.now()), daemon=True)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive(), "now() answered by the uncorrected clock while the first measurement was in flight"
    assert "other" not in seen
    gate.set()
    measuring.join(10)
    waiting.join(10)
    # Both answers are by the server's clock, not five minutes ahead.
    assert set(seen) == {"first", "other"}
    assert all(abs(moment - utcnow()) < timedelta(minutes=1) for moment in seen.values()), seen
