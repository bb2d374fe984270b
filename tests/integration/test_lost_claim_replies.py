"""A claim whose write lands on the server after its reply was given up on (a timeout under load).

The server still applies a write whose client timed out: the job is leased
under the lost try's token, possibly after the retry has already looked for
it. Each test makes that late landing happen at the worst moment,
deterministically (threading events, not load), with ``max_retries=0``: a
job stranded under the lost token would wait out its lease and then fail
without ever running. Pass: every job runs exactly once, on attempt 1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until
from pymongo.errors import NetworkTimeout

pytestmark = pytest.mark.integration


class LateWrite:
    """Turns the first call of one write method into a lost reply whose write lands only when ``land()`` is called."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.lost = threading.Event()
        self._release = threading.Event()
        self._landed = threading.Event()

    def send(self, real: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self.lost.is_set():
            return real(*args, **kwargs)
        self.lost.set()

        def on_server() -> None:
            self._release.wait(30)
            real(*args, **kwargs)
            self._landed.set()

        threading.Thread(target=on_server, daemon=True).start()
        raise NetworkTimeout("timed out (the write is still on its way to the server)")

    @property
    def landed(self) -> threading.Event:
        return self._landed

    def land(self) -> None:
        """Let the lost write apply now, and wait until it did."""
        if self.lost.is_set() and not self._release.is_set():
            self._release.set()
            assert self._landed.wait(10)

    def abandon(self) -> None:
        self._release.set()


def _intercept(queue: Any, late: LateWrite, *, land_on: Callable[[str, dict[str, Any]], bool]) -> None:
    """Route the store's calls through ``late``; the lost write lands before the first call ``land_on`` picks."""
    store_class = type(queue.store)

    class Wrapped:
        def __init__(self, real: Any) -> None:
            self._real = real

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._real, name)
            if not callable(attr):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                if late.lost.is_set() and land_on(name, kwargs):
                    late.land()
                if name == late.method:
                    result = late.send(attr, args, kwargs)
                    if late.lost.is_set() and land_on("after " + name, kwargs):
                        late.land()
                    return result
                return attr(*args, **kwargs)

            return call

    class Intercepted(store_class):  # type: ignore[misc, valid-type]
        @property
        def collection(self) -> Any:
            return Wrapped(super().collection)

    queue.store.__class__ = Intercepted


def _runs(queue: Any, on_run: Callable[[Any], None] = lambda job: None) -> dict[Any, list[int]]:
    runs: dict[Any, list[int]] = {}
    lock = threading.Lock()

    def handler(job: Any) -> None:
        with lock:
            runs.setdefault(job.id, []).append(job.attempts)
        on_run(job)

    queue.register_handler("JOB", handler)
    return runs


def _all_final(job_model: Any, ids: list[Any]) -> bool:
    return all(job_model._get_collection().find_one({"_id": i})["status"] in ("completed", "failed") for i in ids)


def test_a_batch_claim_whose_write_lands_after_the_retry_looked_for_it_runs_the_job(make_queue, job_model) -> None:
    # The first try's update_many lands after the retry's read-back found
    # nothing and before the retry searches for candidates: the job is not
    # pending any more, so the retry finds nothing to claim either.
    queue = make_queue(concurrency=4, max_retries=0, change_stream_wakeups=False)
    runs = _runs(queue)
    late = LateWrite("update_many")
    at_search = lambda name, kwargs: (name == "find" and "sort" in kwargs) or name == "after update_many"  # noqa: E731
    _intercept(queue, late, land_on=at_search)
    job = queue.enqueue("JOB", {})
    try:
        queue.start_polling()
        wait_until(lambda: _all_final(job_model, [job.id]), timeout=20)
    finally:
        late.abandon()
    assert late.lost.is_set()
    assert job_model._get_collection().find_one({"_id": job.id})["status"] == "completed"
    assert runs == {job.id: [1]}


def test_a_single_claim_whose_write_lands_late_runs_the_job_it_leased(make_queue, job_model) -> None:
    # The first try's findAndModify lands after the retry's next write: it
    # leases whichever job is still pending under the lost try's token.
    queue = make_queue(concurrency=1, max_retries=0, change_stream_wakeups=False)
    first, second = queue.enqueue("JOB", {}, priority=2), queue.enqueue("JOB", {}, priority=1)
    collection = job_model._get_collection()
    late = LateWrite("find_one_and_update")
    # Whichever job runs first, the other is leased by the late write before it ends.
    runs = _runs(queue, lambda job: late.landed.wait(10))
    _intercept(queue, late, land_on=lambda name, kwargs: name == "after find_one_and_update")
    try:
        queue.start_polling()
        wait_until(lambda: _all_final(job_model, [first.id, second.id]), timeout=20)
    finally:
        late.abandon()
    assert late.lost.is_set()
    assert [collection.find_one({"_id": j.id})["status"] for j in (first, second)] == ["completed", "completed"]
    assert runs == {first.id: [1], second.id: [1]}


def test_a_claim_of_one_job_whose_write_lands_late_runs_it(make_queue, job_model) -> None:
    # run_job_now (claim_job): the lost try's write lands just before the
    # retry's own write, which then finds the job no longer pending.
    queue = make_queue(max_retries=0)
    runs = _runs(queue)
    late = LateWrite("find_one_and_update")
    _intercept(queue, late, land_on=lambda name, kwargs: name == "find_one_and_update")
    job = queue.enqueue("JOB", {})
    try:
        assert queue.worker.run_job_now(job.id)
    finally:
        late.abandon()
    assert late.lost.is_set()
    assert job_model._get_collection().find_one({"_id": job.id})["status"] == "completed"
    assert runs == {job.id: [1]}
