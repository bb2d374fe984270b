"""The group-commit flusher thread (``batch_acks``) is one of the worker's threads: its stop tracks and joins it."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from helpers import wait_until

pytestmark = pytest.mark.integration


def test_a_stop_counts_and_names_a_flusher_still_in_its_write(
    make_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(batch_acks=True)
    gate, entered = threading.Event(), threading.Event()
    real_complete = queue.store.jobs.complete

    def held_complete(claimed: Any, result: Any) -> Any:
        if threading.current_thread().name.endswith("-acks"):  # the flusher's write of a flush of one
            entered.set()
            assert gate.wait(30), "gate never opened"
        return real_complete(claimed, result)

    queue.store.jobs.complete = held_complete
    queue.register_handler("T", lambda job: "ok")
    job = queue.enqueue("T", {})
    queue.start_polling()
    try:
        assert entered.wait(10), "the completion never reached the flusher"
        flusher = next(t for t in threading.enumerate() if t.name.endswith("-acks") and t.is_alive())
        with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
            assert queue.stop(timeout=0.5) is False
        still = [r.getMessage() for r in caplog.records if "still running after stop" in r.getMessage()]
        assert still and flusher.name in still[-1], still
    finally:
        gate.set()
    wait_until(lambda: not flusher.is_alive(), timeout=10, what="the flusher ending once its write lands")
    assert queue.get_job(job.id).status == "completed"
