"""Batched claims, batched acknowledgements and change-stream wake-ups, over the wire."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import mongoengine
import pytest
from helpers import wait_until
from pymongo import monitoring

from mongo_job_queue import BaseJob, LeaseOwner, create_job_queue
from mongo_job_queue.worker.completer import AckBuffer
from mongo_job_queue.worker.inflight import run_key

pytestmark = pytest.mark.integration

COUNTED_ALIAS = "mjq_counted"


class CountedJob(BaseJob):
    meta = {"collection": "counted_jobs", "db_alias": COUNTED_ALIAS}


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends, by name (hello excluded: that is the driver's monitoring)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        #: The filter and projection of every ``find`` (projection None: whole documents).
        self.finds: list[tuple[Any, Any]] = []
        #: The statements of every ``update`` command, one list per command.
        self.updates: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("hello", "isMaster", "ismaster", "endSessions"):
            with self.lock:
                self.counts[event.command_name] += 1
                if event.command_name == "find":
                    self.finds.append((event.command.get("filter"), event.command.get("projection")))
                if event.command_name == "update":
                    self.updates.append(list(event.command.get("updates") or []))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())


@pytest.fixture
def counted(mongodb_uri, db_name):
    counter = CommandCounter()
    mongoengine.connect(
        db=db_name, host=mongodb_uri, alias=COUNTED_ALIAS, event_listeners=[counter], uuidRepresentation="standard"
    )
    CountedJob.drop_collection()
    CountedJob.ensure_indexes()
    yield counter
    CountedJob.drop_collection()
    mongoengine.disconnect(alias=COUNTED_ALIAS)


def _queue(**config: Any):
    return create_job_queue(job_model=CountedJob, config={"sync_clock": False, **config})


def test_claim_batch_takes_k_jobs_in_two_round_trips(counted) -> None:
    queue = _queue()
    queue.enqueue_many([{"job_type": "T", "data": {"n": n}, "priority": n % 3} for n in range(20)])
    queue.store.control.pause_state()  # as a worker does before it claims: it says no limit was ever stored
    counted.counts.clear()
    claimed = queue.store.jobs.claim_batch(["T"], ["default"], LeaseOwner.current("w"), 8)
    assert counted.total() == 2, counted.counts
    assert len(claimed) == 8
    assert [c.doc["priority"] for c in claimed] == [2] * 6 + [1] * 2
    assert len({c.token for c in claimed}) == 1
    for c in claimed:
        stored = CountedJob.objects.get(id=c.id)
        assert stored.status == "processing" and stored.attempts == 1 == c.doc["attempts"]
        assert stored.lease_token == c.token and stored.lease_expires_at == c.doc["lease_expires_at"]
    assert CountedJob.objects(status="pending").count() == 12


class _RaceCollection:
    """Proxy that lets a competing worker claim one candidate between the batch's read and its update."""

    def __init__(self, real: Any, compete) -> None:
        self._real = real
        self._compete = compete

    def update_many(self, *args: Any, **kwargs: Any) -> Any:
        self._compete()
        return self._real.update_many(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_claim_batch_under_contention_keeps_only_what_it_won(counted, monkeypatch) -> None:
    queue = _queue()
    queue.enqueue_many([{"job_type": "T", "data": {"n": n}, "priority": 10 - n} for n in range(6)])
    rival = _queue()
    stolen: list[Any] = []
    real = queue.store.collection

    def compete() -> None:
        if not stolen:  # the rival takes the most urgent job first
            stolen.append(rival.store.jobs.claim(["T"], ["default"], LeaseOwner.current("rival")))

    monkeypatch.setattr(type(queue.store), "collection", property(lambda self: _RaceCollection(real, compete)))
    counted.finds.clear()
    claimed = queue.store.jobs.claim_batch(["T"], ["default"], LeaseOwner.current("w"), 4)
    monkeypatch.undo()
    won = stolen[0]
    assert won is not None and won.doc["data"]["n"] == 0
    assert len(claimed) == 3
    assert won.id not in {c.id for c in claimed}
    assert CountedJob.objects.get(id=won.id).lease_token == won.token
    # The payloads are read once: the read-back of what our token won asks for the ids alone.
    read_backs = [projection for query, projection in counted.finds if "lease_token" in query]
    assert read_backs == [{"_id": 1}], counted.finds
    for c in claimed:
        stored = CountedJob.objects.get(id=c.id)
        assert stored.lease_token == c.token and stored.attempts == 1 == c.doc["attempts"]
        assert c.doc == CountedJob._get_collection().find_one({"_id": c.id})  # as if read back


def test_complete_many_fences_each_job_by_its_token(counted) -> None:
    queue = _queue()
    queue.enqueue_many([{"job_type": "T"} for _ in range(3)])
    claimed = queue.store.jobs.claim_batch(["T"], ["default"], LeaseOwner.current("w"), 3)
    lost = claimed[1]
    CountedJob.objects(id=lost.id).update(set__lease_token="someone-else")
    counted.counts.clear()
    written = queue.store.jobs.complete_many([(c, {"i": i}) for i, c in enumerate(claimed)])
    assert written == {(claimed[0].id, claimed[0].token), (claimed[2].id, claimed[2].token)}
    assert counted.counts["update"] == 1  # one bulk write for all three
    assert CountedJob.objects.get(id=lost.id).status == "processing"
    assert CountedJob.objects.get(id=claimed[2].id).result == {"i": 2}


def test_complete_many_writes_a_claim_batchs_no_result_completions_in_one_statement(counted) -> None:
    # One update_many per claim batch (one token, one update) instead of one statement per job:
    # per document the same fence, so a lost lease still fails only its own job.
    queue = _queue()
    queue.enqueue_many([{"job_type": "T"} for _ in range(7)])
    first = queue.store.jobs.claim_batch(["T"], ["default"], LeaseOwner.current("w"), 4)
    second = queue.store.jobs.claim_batch(["T"], ["default"], LeaseOwner.current("w"), 3)
    lost = first[1]
    CountedJob.objects(id=lost.id).update(set__lease_token="someone-else")
    counted.updates.clear()
    runs = [(c, None) for c in first] + [(second[0], None), (second[1], {"r": 1}), (second[2], None)]
    written = queue.store.jobs.complete_many(runs)
    assert written == {(c.id, c.token) for c in first + second if c is not lost}
    (statements,) = counted.updates  # one bulk write
    # The first batch's four (the lost one matches nothing), the second batch's two without a result,
    # and the one with a result alone.
    assert sorted(len(s["q"]["_id"]["$in"]) if s.get("multi") else 1 for s in statements) == [1, 2, 4]
    assert all(s["q"]["status"] == "processing" and s["q"]["lease_token"] for s in statements)
    assert CountedJob.objects.get(id=lost.id).status == "processing"
    assert CountedJob.objects(status="completed").count() == 6
    assert CountedJob.objects.get(id=second[1].id).result == {"r": 1}


def test_pool_with_batching_runs_every_job_once_with_fewer_round_trips(counted) -> None:
    queue = _queue(concurrency=8, poll_interval_base_ms=20, poll_interval_max_ms=100)
    runs: Counter[Any] = Counter()
    lock = threading.Lock()

    @queue.handler("T")
    def handler(job) -> None:
        with lock:
            runs[job.id] += 1

    jobs = queue.enqueue_many([{"job_type": "T", "data": {"n": n}} for n in range(120)])
    counted.counts.clear()
    queue.start_polling()
    try:
        wait_until(lambda: CountedJob.objects(status="completed").count() == 120, timeout=120)
    finally:
        assert queue.stop(timeout=10)
    assert set(runs) == {j.id for j in jobs} and set(runs.values()) == {1}
    writes = counted.counts["findAndModify"] + counted.counts["update"]
    # Single claims and single acks would need 240 writes; batching needs far fewer.
    assert writes < 120, counted.counts


def test_batching_can_be_turned_off(counted) -> None:
    queue = _queue(concurrency=4, batch_claims=False, batch_acks=False, change_stream_wakeups=False)
    queue.register_handler("T", lambda job: None)
    queue.enqueue_many([{"job_type": "T"} for _ in range(10)])
    counted.counts.clear()
    queue.start_polling()
    try:
        wait_until(lambda: CountedJob.objects(status="completed").count() == 10, timeout=60)
    finally:
        queue.stop(timeout=10)
    assert counted.counts["findAndModify"] >= 10  # one claim per job
    assert counted.counts["update"] >= 10  # one completion per job


def test_change_stream_wakes_an_idle_worker(counted, make_queue, job_model) -> None:
    if not CountedJob._get_db().client.admin.command("hello").get("setName"):
        pytest.skip("change streams need a replica set")
    idle = _queue(poll_interval_base_ms=5_000, poll_interval_max_ms=5_000)
    idle.register_handler("T", lambda job: None)
    polls: list[float] = []
    real = idle.worker.poller.claim_some

    def counting(*args: Any, **kwargs: Any) -> Any:
        polls.append(time.monotonic())
        return real(*args, **kwargs)

    idle.worker.poller.claim_some = counting  # type: ignore[method-assign]
    idle.start_polling()
    try:
        wait_until(lambda: polls)  # the first, empty poll: now it waits 5 s
        wait_until(lambda: idle.worker.listening_for_jobs, timeout=10, what="the change stream to open")
        web = _queue()  # another process's queue object: no local wake-up
        started = time.monotonic()
        job = web.enqueue("T", {})
        wait_until(lambda: CountedJob.objects.get(id=job.id).status == "completed", timeout=10)
        assert time.monotonic() - started < 2.5  # well under the 5 s poll interval
    finally:
        idle.stop(timeout=10)


def test_a_raising_ack_callback_leaves_no_completion_of_its_flush_unwritten(make_queue, job_model) -> None:
    # One flush carries B and C; the bulk write fails, so each is written on
    # its own, and reporting each raises SystemExit: every one is still
    # written and leaves the in-flight set, so stop() ends cleanly.
    queue = make_queue(concurrency=3, batch_acks=True)
    flushing = threading.Event()
    calls: list[int] = []
    worker = queue.worker
    complete = queue.store.jobs.complete

    def held_complete(claimed: Any, result: Any = None) -> Any:
        if not flushing.is_set():  # A's flush, a single write: held until B and C are buffered behind it
            flushing.set()
            wait_until(lambda: len(worker.table) == 0, timeout=10)
        return complete(claimed, result)

    def failing_complete_many(jobs: Any) -> Any:
        calls.append(len(jobs))
        raise ConnectionError("simulated failed bulk write")

    def exiting_report(claimed: Any, written: Any) -> None:
        raise SystemExit("a reporting callback exits")

    queue.store.jobs.complete = held_complete  # type: ignore[method-assign]
    queue.store.jobs.complete_many = failing_complete_many  # type: ignore[method-assign]
    worker.executor.report_completion = exiting_report  # type: ignore[method-assign]

    @queue.handler("ACK")
    def ack(job: Any) -> None:
        if job.data["n"] != "A":
            assert flushing.wait(10)

    jobs = [queue.enqueue("ACK", {"n": n}) for n in "ABC"]
    queue.start_polling()
    wait_until(lambda: calls, timeout=10)
    wait_until(
        lambda: all(job_model.objects.get(id=j.id).status == "completed" for j in jobs),
        timeout=10,
        what="every completion written",
    )
    assert calls == [2]  # B and C shared the second flush, a bulk write; A's was a single write
    assert queue.stop(10) is True


def test_a_flush_of_one_completion_is_one_single_write(counted) -> None:
    # Nothing to group (concurrency 1): the fenced single update, and a lost lease is told by
    # that write and one read, not by a bulk write, its read and then the single write and read.
    queue = _queue(batch_acks=True)
    queue.register_handler("T", lambda job: None)
    reports: list[Any] = []
    buffer = AckBuffer(queue.store, lambda claimed, outcome: reports.append(outcome))
    stale, live = _two_runs_of_one_job(queue, CountedJob)
    counted.counts.clear()
    buffer._flush([(stale, "stale")])
    assert reports == [False]
    assert dict(counted.counts) == {"update": 1, "find": 1}
    counted.counts.clear()
    buffer._flush([(live, "live")])
    assert reports == [False, True]
    assert counted.counts["update"] == 1  # (a find may follow: the probe for blocked dependents, once a second)
    assert (CountedJob.objects.get(id=live.id).status, CountedJob.objects.get(id=live.id).result) == (
        "completed",
        "live",
    )


def _two_runs_of_one_job(queue: Any, job_model: Any) -> tuple[Any, Any]:
    """Claim a job (run 1), return it to the queue as a lease rescue would, and claim it again (run 2)."""
    job = queue.enqueue("T", {})
    first = queue.worker.claim_one()
    job_model.objects(id=job.id).update(set__status="pending")
    second = queue.worker.claim_one()
    assert first.id == second.id == job.id and first.token != second.token
    return first, second


def test_complete_many_reports_per_run_when_two_runs_of_one_job_share_a_flush(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    stale, live = _two_runs_of_one_job(queue, job_model)
    reports: list[tuple[str, Any]] = []
    buffer = AckBuffer(queue.store, lambda claimed, outcome: reports.append((claimed.token, outcome)))
    buffer._flush([(stale, "stale"), (live, "live")])
    doc = job_model.objects.get(id=live.id)
    assert (doc.status, doc.result) == ("completed", "live")
    assert sorted(reports) == sorted([(stale.token, False), (live.token, True)])  # the stale run lost its lease
    assert queue.store.jobs.complete_many([(stale, "stale")]) == set()


def test_the_heartbeat_renews_the_newest_run_when_two_runs_of_one_job_await_their_ack(make_queue, job_model) -> None:
    queue = make_queue(lease_ms=30_000, heartbeat_interval_ms=10_000)
    queue.register_handler("T", lambda job: None)
    stale, live = _two_runs_of_one_job(queue, job_model)
    table = queue.worker.table
    table.add(stale)
    table.add(live)
    # The newer run finished first; the stale run's completion is buffered after it.
    for run in (live, stale):
        table.begin_ack(run)
        table.remove(run_key(run))
    try:
        before = job_model.objects.get(id=live.id).lease_expires_at
        claimed_by = queue.store.now()
        wait_until(lambda: queue.store.now() > claimed_by + timedelta(milliseconds=5))  # a renewal now extends it
        queue.worker.renew_leases()
        assert job_model.objects.get(id=live.id).lease_expires_at > before
    finally:
        table.clear()
