"""queue.wait() and get_job(): waiting without a limit, and ids that are not ObjectIds."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from bson import ObjectId
from helpers import wait_until

from mongo_job_queue import InvalidJobIdError, JobTimeout

pytestmark = pytest.mark.integration


def test_wait_with_no_timeout_waits_until_the_job_finishes(make_queue) -> None:
    queue = make_queue()
    gate = threading.Event()
    queue.register_handler("T", lambda job: gate.wait(30) and "done")
    job = queue.enqueue("T")
    queue.start_polling()
    waited: dict[str, Any] = {}

    def waiter() -> None:
        try:
            waited["job"] = queue.wait(job.id, timeout=None)
        except BaseException as exc:  # reported by the assertion below
            waited["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: queue.get_job(job.id).status == "processing", what="the job running")
    assert thread.is_alive() and not waited
    gate.set()
    thread.join(30)
    assert "error" not in waited, waited
    assert (waited["job"].status, waited["job"].result) == ("completed", "done")


@pytest.mark.parametrize("bad", ["not-an-id", "12345", "6b0e97c39b64a080449f5e8z", 42, None, b"\x00" * 12])
def test_an_id_that_is_not_an_object_id_raises_a_clear_error(make_queue, bad: Any) -> None:
    queue = make_queue()
    for call in (lambda: queue.get_job(bad), lambda: queue.wait(bad, timeout=1)):
        with pytest.raises(InvalidJobIdError, match="job id must be an ObjectId or a 24-hex-digit str") as caught:
            call()
        assert isinstance(caught.value, ValueError)


def test_wait_accepts_str_ids_and_refuses_a_bad_timeout(make_queue) -> None:
    queue = make_queue()
    job = queue.enqueue("T")
    assert queue.get_job(str(job.id)).id == job.id
    assert queue.wait(str(ObjectId())) is None  # no such job
    with pytest.raises(JobTimeout):
        queue.wait(str(job.id), timeout=0)
    for bad in (-1, float("nan"), "10", True):
        with pytest.raises(ValueError, match="timeout must be None"):
            queue.wait(job.id, timeout=bad)
