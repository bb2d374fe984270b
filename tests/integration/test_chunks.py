"""Chunked handlers over the wire: per-job outcomes, the exception path, key partitions, size and wait, fencing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import wait_until

from mongo_job_queue import ChunkResult, Middleware

pytestmark = pytest.mark.integration


class Recorder(Middleware):
    """Records the chunk and per-job events, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _add(self, name: str, what: Any) -> None:
        with self.lock:
            self.events.append((name, what))

    def before_chunk(self, queue: Any, jobs: list[Any]) -> None:
        self._add("before_chunk", [j.pk for j in jobs])

    def after_chunk(self, queue: Any, jobs: list[Any], *, outcomes: Any, exc: Any, duration_s: float) -> None:
        self._add("after_chunk", list(outcomes))

    def before_process(self, queue: Any, job: Any) -> None:
        self._add("before_process", job.pk)

    def after_process(self, queue: Any, job: Any, *, outcome: str, exc: Any, duration_s: float) -> None:
        self._add("after_process", (job.pk, outcome))


def _statuses(raw_db: Any) -> dict[Any, dict[str, Any]]:
    return {d["_id"]: d for d in raw_db.jobs.find({})}


def test_partial_failure_retries_only_the_marked_jobs_on_their_own_counters(make_queue, raw_db) -> None:
    queue = make_queue()
    recorder = Recorder()
    queue.add_middleware(recorder)
    chunks: list[list[tuple[int, int]]] = []

    def handle(jobs: list[Any]) -> ChunkResult:
        chunks.append([(j.data["i"], j.attempts) for j in jobs])
        result = ChunkResult()
        for job in jobs:
            i = job.data["i"]
            if i % 3 == 0 and job.attempts < 2:
                result.retry(job, "not yet", delay_ms=0)
            elif i % 3 == 1:
                result.done(job, {"i": i})
            # i % 3 == 2: not named, so done without a result
        return result

    queue.register_batch_handler("SMS", handle, max_size=20, max_wait_ms=200)
    jobs = queue.enqueue_many([{"job_type": "SMS", "data": {"i": i}, "max_retries": 3} for i in range(9)])
    stingy = queue.enqueue("SMS", {"i": 99}, max_retries=0)  # 99 % 3 == 0: marked retry, but no retry is left
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": {"$in": ["completed", "failed"]}}) == 10, timeout=30)

    docs = _statuses(raw_db)
    for job in jobs:
        doc, i = docs[job.id], job.data["i"]
        assert doc["status"] == "completed"
        assert doc["attempts"] == (2 if i % 3 == 0 else 1), (i, doc)
        assert doc.get("result") == ({"i": i} if i % 3 == 1 else None)
        if i % 3 == 0:
            [error] = doc["errors"]
            assert error["attempt"] == 1 and "not yet" in error["message"]
    assert docs[stingy.id]["status"] == "failed" and docs[stingy.id]["attempts"] == 1
    assert len(chunks[0]) > 1, chunks  # the first chunk took several jobs in one call
    assert all(len(c) <= 20 for c in chunks)

    # Per-job events around each chunk, in order: before_chunk, before each, after each, after_chunk.
    first_ids = recorder.events[0][1]
    assert recorder.events[0][0] == "before_chunk"
    n = len(first_ids)
    assert [e[0] for e in recorder.events[1 : 1 + n]] == ["before_process"] * n
    assert [e[0] for e in recorder.events[1 + n : 1 + 2 * n]] == ["after_process"] * n
    assert recorder.events[1 + 2 * n][0] == "after_chunk"
    outcomes = dict(e[1] for e in recorder.events if e[0] == "after_process")
    assert outcomes[stingy.id] == "failed"


def test_an_exception_retries_every_job_each_bounded_by_its_own_max_retries(make_queue, raw_db) -> None:
    queue = make_queue()
    calls: list[list[Any]] = []

    def handle(jobs: list[Any]) -> None:
        calls.append([j.pk for j in jobs])
        raise RuntimeError("provider down")

    queue.register_batch_handler("SMS", handle, max_size=10, max_wait_ms=200)
    jobs = [queue.enqueue("SMS", {"n": n}, max_retries=n) for n in range(3)]
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "failed"}) == 3, timeout=30)
    for n, job in enumerate(jobs):
        doc = raw_db.jobs.find_one({"_id": job.id})
        assert doc["attempts"] == n + 1
        assert [e["attempt"] for e in doc["errors"]] == list(range(1, n + 2))
        assert all("provider down" in e["message"] for e in doc["errors"])
    assert sum(len(c) for c in calls) == 1 + 2 + 3  # each job ran exactly its own number of attempts
    assert len(calls[0]) == 3


def test_a_chunk_never_mixes_key_values_and_respects_max_size(make_queue, raw_db) -> None:
    queue = make_queue()
    chunks: list[list[str]] = []
    lock = threading.Lock()

    def handle(jobs: list[Any]) -> None:
        with lock:
            chunks.append([j.organization for j in jobs])

    queue.register_batch_handler("SYNC", handle, max_size=4, max_wait_ms=100, key="organization")
    specs = [{"job_type": "SYNC", "organization": org} for _ in range(7) for org in ("a", "b", "c")]
    queue.enqueue_many(specs)
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 21, timeout=30)
    assert all(1 <= len(c) <= 4 and len(set(c)) == 1 for c in chunks), chunks
    assert sorted(o for c in chunks for o in c) == sorted(s["organization"] for s in specs)
    assert max(len(c) for c in chunks) == 4


def test_fewer_than_max_size_run_after_at_most_max_wait_and_a_full_chunk_at_once(make_queue, raw_db) -> None:
    queue = make_queue()
    called: list[tuple[float, int]] = []
    cond = threading.Condition()

    def handle(jobs: list[Any]) -> None:
        with cond:
            called.append((time.monotonic(), len(jobs)))
            cond.notify_all()

    max_wait_ms = 800
    queue.register_batch_handler("SMS", handle, max_size=10, max_wait_ms=max_wait_ms)
    queue.register_batch_handler("BULK", handle, max_size=10, max_wait_ms=20_000)
    queue.start_polling()
    wait_until(lambda: queue.worker.running)
    started = time.monotonic()
    queue.enqueue_many([{"job_type": "SMS"} for _ in range(3)])
    with cond:
        assert cond.wait_for(lambda: called, timeout=max_wait_ms / 1000 + 5)
    at, size = called[0]
    assert size == 3
    # It waited for the chunk to fill (fewer than max_size were due), but no longer than max_wait_ms and a poll.
    assert 0.5 * max_wait_ms / 1000 <= at - started <= max_wait_ms / 1000 + 2.0, at - started

    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 3)
    started = time.monotonic()
    queue.enqueue_many([{"job_type": "BULK"} for _ in range(10)])
    with cond:
        assert cond.wait_for(lambda: len(called) == 2, timeout=10)  # a full chunk does not wait its 20 s
    at, size = called[1]
    assert size == 10


def test_a_stale_chunks_late_write_changes_nothing(make_queue, raw_db) -> None:
    # A heartbeat far apart from the lease: no renewal lands between the forced expiry and the rescue.
    stale = make_queue(lease_ms=60_000, heartbeat_interval_ms=20_000)
    recorder = Recorder()
    stale.add_middleware(recorder)
    gate, entered = threading.Event(), threading.Event()

    def slow(jobs: list[Any]) -> ChunkResult:
        entered.set()
        gate.wait(30)
        result = ChunkResult()
        for job in jobs:
            result.done(job, "stale")
        return result

    stale.register_batch_handler("SMS", slow, max_size=10, max_wait_ms=100)
    jobs = stale.enqueue_many([{"job_type": "SMS", "data": {"n": n}} for n in range(3)])
    stale.start_polling()
    assert entered.wait(15)
    wait_until(lambda: raw_db.jobs.count_documents({"status": "processing"}) == 3)
    stale_token = raw_db.jobs.find_one({})["lease_token"]

    # The lease runs out (as for a frozen worker) and another process rescues and reruns the jobs.
    raw_db.jobs.update_many({}, {"$set": {"lease_expires_at": raw_db.jobs.find_one({})["created_at"]}})
    fresh = make_queue()
    fresh.recover_orphans()  # the stale worker's own sweep may take some first: either way, all three
    wait_until(lambda: raw_db.jobs.count_documents({"status": "pending", "attempts": 1}) == 3)
    fresh.register_batch_handler("SMS", lambda jobs: ChunkResult().done(jobs[0], "fresh") if len(jobs) == 1 else None)
    fresh.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 3)
    before = _statuses(raw_db)
    assert all(d["lease_token"] != stale_token for d in before.values())

    gate.set()  # the stale chunk returns and writes its outcomes: every one must lose to the fence
    wait_until(lambda: any(e[0] == "after_chunk" for e in recorder.events))
    assert _statuses(raw_db) == before
    assert [e[1] for e in recorder.events if e[0] == "after_chunk"] == [["lease_lost"] * 3]
    assert {job.id for job in jobs} == set(before)


def test_a_cancel_request_ends_its_job_cancelled_unless_the_chunk_completed_it(make_queue, raw_db) -> None:
    # As for a single handler: a job the handler completes completes (the work was done), whatever the
    # heartbeat learnt meanwhile; one it retries ends cancelled; one it cancels on seeing the request too.
    queue = make_queue()
    gate, entered = threading.Event(), threading.Event()
    seen: list[bool] = []

    def handle(jobs: list[Any]) -> ChunkResult:
        entered.set()
        gate.wait(30)
        seen.extend(j.is_cancel_requested() for j in jobs)
        result = ChunkResult()
        for job in jobs:
            if job.data["n"] == 2:
                result.retry(job, "again", delay_ms=0)
            elif job.data["n"] == 3 and job.is_cancel_requested():
                result.cancel(job)
        return result

    queue.register_batch_handler("SMS", handle, max_size=10, max_wait_ms=100)
    jobs = queue.enqueue_many([{"job_type": "SMS", "data": {"n": n}} for n in range(4)])
    queue.start_polling()
    assert entered.wait(15)
    wait_until(lambda: raw_db.jobs.count_documents({"status": "processing"}) == 4)
    for job in jobs[1:]:
        queue.cancel_job(job.id)
    wait_until(lambda: sum(s.cancel_requested.is_set() for s in queue.worker.table.running()) == 3, timeout=10)
    gate.set()
    wait_until(lambda: raw_db.jobs.count_documents({"status": {"$in": ["completed", "cancelled"]}}) == 4)
    docs = _statuses(raw_db)
    assert [docs[j.id]["status"] for j in jobs] == ["completed", "completed", "cancelled", "cancelled"]
    assert seen == [False, True, True, True]


def _progress_chunk(queue: Any, raw_db: Any, n: int) -> tuple[list[Any], threading.Event, list[list[int]]]:
    """A chunk of ``n`` jobs whose handler, once the returned gate opens, reports progress on every job."""
    gate, entered = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def handle(jobs: list[Any]) -> None:
        calls.append([j.data["n"] for j in jobs])
        entered.set()
        gate.wait(30)
        for job in jobs:
            job.report_progress(50)  # in a chunk it never raises: that would end the call for every job

    queue.register_batch_handler("SMS", handle, max_size=10, max_wait_ms=100)
    jobs = queue.enqueue_many([{"job_type": "SMS", "data": {"n": i}, "max_retries": 3} for i in range(n)])
    queue.start_polling()
    assert entered.wait(15)
    wait_until(lambda: raw_db.jobs.count_documents({"status": "processing"}) == n)
    return jobs, gate, calls


def test_a_cancel_met_by_one_jobs_progress_report_cancels_that_job_alone(make_queue, raw_db) -> None:
    queue = make_queue()
    recorder = Recorder()
    queue.add_middleware(recorder)
    jobs, gate, calls = _progress_chunk(queue, raw_db, 3)
    queue.cancel_job(jobs[1].id)
    wait_until(lambda: any(s.cancel_requested.is_set() for s in queue.worker.table.running()), timeout=10)
    gate.set()
    wait_until(lambda: raw_db.jobs.count_documents({"status": {"$in": ["completed", "cancelled"]}}) == 3)
    docs = _statuses(raw_db)
    assert [docs[j.id]["status"] for j in jobs] == ["completed", "cancelled", "completed"]
    assert [docs[j.id]["attempts"] for j in jobs] == [1, 1, 1] and len(calls) == 1
    assert not any(docs[j.id].get("errors") for j in jobs)
    wait_until(lambda: any(e[0] == "after_chunk" for e in recorder.events))
    assert [e[1] for e in recorder.events if e[0] == "after_chunk"] == [["completed", "cancelled", "completed"]]


def test_one_jobs_lost_lease_costs_the_other_jobs_of_its_chunk_nothing(make_queue, raw_db) -> None:
    queue = make_queue()
    recorder = Recorder()
    queue.add_middleware(recorder)
    jobs, gate, calls = _progress_chunk(queue, raw_db, 3)
    # Job 1 is taken over by another worker (a new claim's token): its heartbeat renewal finds the lease gone.
    raw_db.jobs.update_one({"_id": jobs[1].id}, {"$set": {"lease_token": "another-claim", "attempts": 2}})
    wait_until(lambda: any(s.lease_lost.is_set() for s in queue.worker.table.running()), timeout=10)
    gate.set()
    wait_until(lambda: any(e[0] == "after_chunk" for e in recorder.events), timeout=15)
    docs = _statuses(raw_db)
    assert [docs[j.id]["status"] for j in jobs] == ["completed", "processing", "completed"]
    assert [docs[j.id]["attempts"] for j in jobs] == [1, 2, 1] and len(calls) == 1
    assert docs[jobs[1].id]["lease_token"] == "another-claim" and "progress" not in docs[jobs[1].id]
    assert [e[1] for e in recorder.events if e[0] == "after_chunk"] == [["completed", "lease_lost", "completed"]]


def test_stop_does_not_wait_for_a_chunk_to_fill(make_queue) -> None:
    queue = make_queue()
    queue.register_batch_handler("SMS", lambda jobs: None, max_size=100, max_wait_ms=60_000)
    queue.enqueue("SMS")
    queue.start_polling()
    wait_until(lambda: queue.worker.running)
    time.sleep(0.3)  # let the runner see the due job and start its long wait for more
    started = time.monotonic()
    assert queue.stop(timeout=10)
    assert time.monotonic() - started < 3


def test_one_consumer_span_per_chunk_links_every_producer(make_queue, raw_db) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from mongo_job_queue.contrib.otel import OpenTelemetryMiddleware

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    queue = make_queue()
    queue.add_middleware(OpenTelemetryMiddleware(tracer_provider=provider))
    queue.register_batch_handler("SMS", lambda jobs: ChunkResult().retry(jobs[0], delay_ms=60_000), max_wait_ms=300)
    jobs = [queue.enqueue("SMS", {"n": n}) for n in range(3)]
    queue.start_polling()
    wait_until(lambda: any(s.kind == SpanKind.CONSUMER for s in exporter.get_finished_spans()))

    spans = exporter.get_finished_spans()
    producers = {s.attributes["messaging.message.id"]: s for s in spans if s.kind == SpanKind.PRODUCER}
    [chunk] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert chunk.attributes["messaging.batch.message_count"] == 3
    assert {link.context.span_id for link in chunk.links} == {p.context.span_id for p in producers.values()}
    events = {e.attributes["messaging.message.id"]: e.attributes["mongo_job_queue.job.outcome"] for e in chunk.events}
    assert events == {str(jobs[0].id): "retry", str(jobs[1].id): "completed", str(jobs[2].id): "completed"}


def test_the_time_limit_bounds_the_chunk_and_an_abandoned_chunk_writes_nothing(make_queue, raw_db) -> None:
    queue = make_queue(time_limit_grace_ms=300)
    calls: list[tuple[str, int]] = []

    def handle(jobs: list[Any]) -> None:
        kind = jobs[0].data["kind"]
        calls.append((kind, jobs[0].attempts))
        if jobs[0].attempts == 1 and kind == "spin":
            while True:  # Python code: the watchdog's exception reaches it
                time.sleep(0.01)
        if jobs[0].attempts == 1 and kind == "block":
            threading.Event().wait(5)  # one C call: unreachable, so abandoned after the grace

    queue.register_batch_handler("SPIN", handle, max_wait_ms=200, time_limit_ms=300)
    queue.register_batch_handler("BLOCK", handle, max_wait_ms=200, time_limit_ms=300)
    spun = queue.enqueue_many([{"job_type": "SPIN", "data": {"kind": "spin"}} for _ in range(2)])
    blocked = queue.enqueue_many([{"job_type": "BLOCK", "data": {"kind": "block"}} for _ in range(2)])
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 4, timeout=30)
    for job in spun:
        doc = raw_db.jobs.find_one({"_id": job.id})
        assert doc["attempts"] == 2
        assert [e["type"] for e in doc["errors"]] == ["mongo_job_queue.errors.JobTimeLimitExceeded"]
    for job in blocked:
        doc = raw_db.jobs.find_one({"_id": job.id})
        assert doc["attempts"] == 2  # its leases were let go: lease expiry returned it, the attempt counted
        assert [e["type"] for e in doc["errors"]] == ["mongo_job_queue.errors.LeaseExpired"]
    assert ("block", 2) in calls  # a new thread ran the rerun while the abandoned one was still blocked
    before = _statuses(raw_db)
    wait_until(lambda: not any(t.name.endswith("chunks-BLOCK") and t.is_alive() for t in threading.enumerate()))
    assert _statuses(raw_db) == before  # the abandoned call returned and wrote nothing


def test_an_idle_runner_looks_every_max_wait_whatever_the_pollers_backoff(make_queue) -> None:
    queue = make_queue(poll_interval_base_ms=250, poll_interval_max_ms=30_000)
    called = threading.Event()
    queue.register_batch_handler("SMS", lambda jobs: called.set(), max_size=10, max_wait_ms=300)
    queue.start_polling()
    time.sleep(4)  # idle long enough for a doubling backoff to be in a 4 s wait (0.25 + 0.5 + 1 + 2 s before it)
    started = time.monotonic()
    queue.enqueue("SMS")
    assert called.wait(10)
    # At most one idle look (every max_wait_ms, 300 ms) and the fill wait (300 ms), plus slack.
    assert time.monotonic() - started <= 0.3 + 0.3 + 1.5


WCE = {"writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}}


def test_the_bulk_outcome_write_reports_per_run_through_partial_matches_and_an_ambiguous_reply(
    make_queue, raw_db, failpoint
) -> None:
    from mongo_job_queue import JobError
    from mongo_job_queue.store import ClaimedJob
    from mongo_job_queue.store.outcomes import FencedWrite, completion_update

    queue = make_queue()
    queue.register_batch_handler("SMS", lambda jobs: None)
    queue.enqueue_many([{"job_type": "SMS", "data": {"n": n}} for n in range(4)])
    claimed = queue.store.jobs.claim_batch(["SMS"], ["default"], queue.worker.owner, 4)
    assert len(claimed) == 4
    done, later, dead, asked = sorted(claimed, key=lambda c: c.doc["data"]["n"])
    raw_db.jobs.update_one({"_id": asked.id}, {"$set": {"cancel_requested": True}})
    now = queue.store.now()
    error = JobError.from_exception(RuntimeError("x"), attempt=1, at=now, token=later.token, config=queue.config)
    stale = ClaimedJob(dict(dead.doc), "not-the-token")
    jobs = queue.store.jobs
    writes = [
        FencedWrite(done, "completed", completion_update(now, {"ok": 1})),
        jobs.rescheduling(later, now, error),
        jobs.failure(stale, error),  # a stale run of a job: its fence matches nothing
        jobs.rescheduling(asked, now, error),  # a cancel was requested: not rescheduled
    ]
    failpoint(["update"], 1, **WCE)  # the writes apply, but the reply is an error: read back per run
    landed = jobs.write_many(writes)
    assert landed == {(done.id, done.token), (later.id, later.token)}
    statuses = {d["_id"]: d["status"] for d in raw_db.jobs.find({})}
    assert statuses == {done.id: "completed", later.id: "pending", dead.id: "processing", asked.id: "processing"}


def test_a_chunks_final_writes_reach_the_final_write_listeners_once_each(make_queue, raw_db) -> None:
    queue = make_queue(retry_delay_ms=60_000)
    told: list[tuple[Any, str]] = []
    queue.store.finals.add(lambda jobs: told.extend((j.id, j.status) for j in jobs))

    def handle(jobs: list[Any]) -> ChunkResult:
        by_n = {j.data["n"]: j for j in jobs}
        return ChunkResult().fail(by_n[1]).retry(by_n[2]).cancel(by_n[3])  # 0: done

    queue.register_batch_handler("SMS", handle, max_wait_ms=200)
    jobs = queue.enqueue_many([{"job_type": "SMS", "data": {"n": n}} for n in range(4)])
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "processing"}) == 0 and len(told) >= 3)
    assert raw_db.jobs.find_one({"_id": jobs[2].id})["status"] == "pending"
    assert sorted(told) == sorted([(jobs[0].id, "completed"), (jobs[1].id, "failed"), (jobs[3].id, "cancelled")])


def test_a_pause_made_while_a_chunk_fills_keeps_its_jobs_from_the_claim(make_queue, raw_db) -> None:
    queue = make_queue(pause_refresh_ms=200)
    other = make_queue()  # another process's queue object pauses, as an operator would
    ran: list[Any] = []
    scopes: list[list[str]] = []
    peek_due = queue.store.jobs.peek_due

    def peek(types: Any, queues: Any, limit: int, **kwargs: Any) -> Any:
        scopes.append(list(types))
        return peek_due(types, queues, limit, **kwargs)

    queue.store.jobs.peek_due = peek
    queue.register_batch_handler("SMS", ran.extend, max_size=100, max_wait_ms=3_000)
    queue.enqueue("SMS")
    queue.start_polling()
    wait_until(lambda: scopes and scopes[-1] == ["SMS"], timeout=10)  # it saw the job and waits for more
    other.pause(job_types=["SMS"])
    wait_until(lambda: queue.worker.poller.claim_scope(chunked=True)[0] == [], timeout=10)
    wait_until(lambda: ran or scopes[-1] == [], timeout=10)  # the fill ended: claimed, or a later step saw the pause
    assert not ran and raw_db.jobs.find_one({})["status"] == "pending"
