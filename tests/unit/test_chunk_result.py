"""The chunk result type and batch handler registration: clear errors for bad input, a chunk of one in eager mode."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId
from conftest import OrgJob

from mongo_job_queue import ChunkJobFailed, ChunkResult, ChunkResultError, HandlerError, RetryJob
from mongo_job_queue.chunks import resolve
from mongo_job_queue.testing import eager


def test_a_job_not_in_the_chunk_is_refused_by_name() -> None:
    inside, outside = ObjectId(), ObjectId()
    result = ChunkResult().done(inside).retry(outside, delay_ms=5)
    with pytest.raises(ChunkResultError, match=str(outside)):
        resolve(result, [inside])


def test_jobs_the_result_does_not_name_are_done_and_none_is_all_done() -> None:
    a, b = ObjectId(), ObjectId()
    outcomes = resolve(ChunkResult().fail(a, "bad number"), [a, b])
    assert (outcomes[a].kind, outcomes[b].kind) == ("fail", "done")
    assert {o.kind for o in resolve(None, [a, b]).values()} == {"done"}


def test_something_else_than_a_chunk_result_is_refused() -> None:
    with pytest.raises(ChunkResultError, match="returns None or a ChunkResult, got dict"):
        resolve({"ok": True}, [ObjectId()])


@pytest.mark.parametrize("delay", [-1, 1.5, True, "10", 10**20])
def test_a_bad_delay_is_refused(delay: Any) -> None:
    with pytest.raises(ChunkResultError, match="delay_ms must be an int"):
        ChunkResult().retry(ObjectId(), delay_ms=delay)


def test_two_outcomes_for_one_job_are_refused_whichever_way_it_is_named() -> None:
    job_id = ObjectId()
    result = ChunkResult().done(job_id)
    with pytest.raises(ChunkResultError, match="already has an outcome"):
        result.cancel(str(job_id))


@pytest.mark.parametrize("job", [None, 42, "not-an-id", object()])
def test_a_job_reference_of_the_wrong_kind_is_refused(job: Any) -> None:
    with pytest.raises(ChunkResultError, match="names jobs by instance, ObjectId or id string"):
        ChunkResult().done(job)


def test_a_bad_error_is_refused() -> None:
    with pytest.raises(ChunkResultError, match="error must be an exception, a str or None"):
        ChunkResult().fail(ObjectId(), error=123)


def test_what_each_outcome_is_recorded_with() -> None:
    a, b, c = ObjectId(), ObjectId(), ObjectId()
    result = ChunkResult().retry(a, "later", delay_ms=7).retry(b).fail(c, ValueError("no"))
    exc = result[a].exception()
    assert isinstance(exc, RetryJob) and exc.delay_ms == 7 and str(exc) == "later"
    assert isinstance(result[b].exception(), ChunkJobFailed)
    assert isinstance(result[c].exception(), ValueError)
    assert len(result) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_size": 0}, "max_size must be an int from 1"),
        ({"max_size": 10_001}, "max_size must be an int from 1"),
        ({"max_wait_ms": -1}, "max_wait_ms must be an int"),
        ({"key": "no_such_field"}, "key must name a field of OrgJob"),
        ({"key": "status"}, "key must name a field of OrgJob"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_a_bad_registration_is_refused(queue: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        queue.register_batch_handler("SMS", lambda jobs: None, **options)
    assert "SMS" not in queue.registry


def test_the_key_is_stored_by_its_database_name(queue: Any) -> None:
    queue.register_batch_handler("SMS", lambda jobs: None, key="organization")
    assert queue.registry.get("SMS").chunk.key == OrgJob._fields["organization"].db_field
    # Batch handlers are claimed by their own runners, never one by one by the poller.
    assert queue.registry.types(chunked=False) == [] and queue.registry.types(chunked=True) == ["SMS"]


def test_eager_mode_runs_a_chunk_of_one(queue: Any) -> None:
    seen: list[int] = []

    def handle(jobs: list[Any]) -> ChunkResult:
        seen.append(len(jobs))
        job = jobs[0]
        return ChunkResult().done(job, {"org": job.organization}) if job.organization else ChunkResult().fail(job)

    queue.register_batch_handler("SMS", handle)
    with eager(queue, propagate=False):
        done = queue.enqueue("SMS", organization="acme")
        failed = queue.enqueue("SMS")
    assert (done.status, done.result) == ("completed", {"org": "acme"})
    assert failed.status == "failed"
    assert seen == [1, 1]
