"""The size limits agree: the largest job enqueue accepts can take an allowed result and a full error history.

A completion the server still refuses as too large (a job enqueued under
other limits) completes the job without its result, with ``result_error``,
instead of being handled as a lost lease and run again.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import wait_until

from mongo_job_queue import ChunkResult, InvalidJobError

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def largest_accepted_blob(queue: Any) -> str:
    """A payload exactly as large as enqueue accepts, read from its own refusal."""
    with pytest.raises(InvalidJobError) as info:
        queue.enqueue("BIG", {"blob": "x" * (16 * MIB)})
    match = re.search(r"is (\d+) bytes; the limit is (\d+)", str(info.value))
    assert match, str(info.value)
    size, limit = int(match.group(1)), int(match.group(2))
    return "x" * (16 * MIB - (size - limit))


#: A job of some 14 MiB is rewritten whole by each renewal on the embedded server: beats every 2.5 s, not the
#: fast tests' 0.5 s (its storage stalled for good late in a CI pass under that load, 2026-12-04).
BIG_DOCUMENT = {"lease_ms": 10_000, "heartbeat_interval_ms": 2_500}


def _final(job_model: Any, job_id: Any) -> Any:
    # Polls the status alone: loading a 14 MiB document on every poll would slow the server for every test.
    status = job_model._get_collection().find_one({"_id": job_id}, {"status": 1})["status"]
    return job_model.objects.get(id=job_id) if status in ("completed", "failed") else None


@pytest.mark.parametrize("batch_acks", [True, False])
def test_largest_job_takes_a_full_error_history_and_an_allowed_result(make_queue, job_model, batch_acks) -> None:
    # Each claim and write moves a 14 MiB document: a 5 s database bound (lease 10 s), not the fast
    # tests' 1.5 s, so a slow machine does not time a claim out. What a claim whose reply is lost
    # does is another matter (a known defect: docs/reliability.rst, "Known limits").
    queue = make_queue(batch_acks=batch_acks, **BIG_DOCUMENT)
    config = queue.config
    runs = []
    # Four-byte characters: the worst case of the error-history bound.
    message = "\U0001f600" * (2 * config.max_error_chars)

    def handler(job: Any) -> str:
        runs.append(job.attempts)
        if job.attempts <= config.max_retries:
            raise RuntimeError(message)
        return "r" * (config.max_result_bytes - 64)  # within max_result_bytes once encoded

    queue.register_handler("BIG", handler)
    blob = largest_accepted_blob(queue)
    job = queue.enqueue("BIG", {"blob": blob})
    queue.start_polling()
    done = wait_until(lambda: _final(job_model, job.id), timeout=60)
    assert queue.stop(timeout=10)
    assert done.status == "completed", (done.status, done.last_error and done.last_error.message[:200])
    assert runs == list(range(1, config.max_retries + 2))
    assert done.result_error is None
    assert len(done.result) == config.max_result_bytes - 64
    assert len(done.errors) == config.max_retries


@pytest.mark.parametrize("batch_acks", [True, False])
def test_a_completion_refused_as_too_large_completes_without_the_result(make_queue, job_model, batch_acks) -> None:
    web = make_queue()  # enqueues under the default limits
    # Allows results too big for that job.
    worker = make_queue(batch_acks=batch_acks, max_result_bytes=4 * MIB, **BIG_DOCUMENT)
    runs = []

    def handler(job: Any) -> str:
        runs.append(job.attempts)
        return "r" * (3 * MIB)

    worker.register_handler("BIG", handler)
    job = web.enqueue("BIG", {"blob": largest_accepted_blob(web)})
    worker.start_polling()
    done = wait_until(lambda: _final(job_model, job.id), timeout=60)
    assert worker.stop(timeout=10)
    assert done.status == "completed"
    assert runs == [1]
    assert done.result is None
    assert "16 MiB" in done.result_error
    assert len(done.result_error) <= worker.config.max_error_chars


def test_a_schedule_is_measured_as_its_fires_write_their_job(make_queue, job_model) -> None:
    """schedule() checks the job with its schedule, fire time and overlap key, as every fire will write it.

    It measured the job without them, so a payload near the limit passed
    schedule() and failed every fire, in the worker's scheduler thread.
    """
    from datetime import datetime, timedelta

    queue = make_queue()
    queue.register_handler("BIG", lambda job: None)
    blob = largest_accepted_blob(queue)  # fits a plain job exactly; a fired job carries more
    with pytest.raises(InvalidJobError, match="bytes; the limit is"):
        queue.schedule(
            "nightly-with-a-long-name" * 4, every_ms=60_000, job_type="BIG", data={"blob": blob}, overlap=False
        )
    assert queue.schedules() == []
    queue.schedule("nightly", every_ms=60_000, job_type="BIG", data={"blob": blob[:-1024]}, overlap=False)
    start = datetime(2032, 1, 1)
    queue.fire_schedules(start)  # the baseline: a new schedule fires from here on
    fires = queue.fire_schedules(start + timedelta(minutes=1))
    assert [f.enqueued for f in fires] == [True]
    assert job_model._get_collection().count_documents({"schedule": "nightly"}) == 1


def test_a_chunk_completion_refused_as_too_large_completes_that_job_without_its_result(make_queue, job_model) -> None:
    web = make_queue()  # enqueues under the default limits
    # Allows results too big for the large job. The bulk write of a 16 MiB update takes its time on a loaded
    # test machine: a longer lease gives each database call a longer bound (half the lease, up to 10 s).
    worker = make_queue(max_result_bytes=4 * MIB, lease_ms=20_000, heartbeat_interval_ms=5_000)
    runs: list[list[Any]] = []

    def handle(jobs: list[Any]) -> ChunkResult:
        runs.append(sorted(job.data.get("n", -1) for job in jobs))
        result = ChunkResult()
        for job in jobs:
            result.done(job, "r" * (3 * MIB) if "blob" in job.data else {"n": job.data["n"]})
        return result

    worker.register_batch_handler("BIG", handle, max_size=10, max_wait_ms=500)
    big = web.enqueue("BIG", {"blob": largest_accepted_blob(web)})
    small = web.enqueue("BIG", {"n": 1})
    worker.start_polling()
    done = wait_until(lambda: _final(job_model, big.id), timeout=60)
    assert worker.stop(timeout=10)
    assert runs == [[-1, 1]]  # one chunk, run once: the refused completion was not taken for a lost lease
    assert done.status == "completed" and done.result is None
    assert "16 MiB" in done.result_error
    other = job_model.objects.get(id=small.id)
    assert other.status == "completed" and other.result == {"n": 1}
