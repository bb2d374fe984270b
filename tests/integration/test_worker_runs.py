"""The worker's runs under adversarial timing: blocked maintenance, failing poller steps, partial claims, lost races."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import holds_for, wait_until

from mongo_job_queue import Middleware
from mongo_job_queue.worker import maintenance


def test_a_blocked_maintenance_step_does_not_delay_heartbeats(make_queue, job_model, monkeypatch) -> None:
    # The sweep of worker A hangs (a slow query on its connection); its
    # heartbeat must go on, so worker B never takes A's live job.
    lease = {"lease_ms": 1_000, "heartbeat_interval_ms": 200, "sweep_interval_ms": 200}
    a = make_queue(concurrency=1, **lease)
    b = make_queue(**lease)
    gate = threading.Event()
    sweeping = threading.Event()
    real_read = maintenance.earliest_lease_expiry

    def blocked_sweep(*args: Any, **kwargs: Any) -> Any:
        sweeping.set()
        assert gate.wait(30)
        return real_read(*args, **kwargs)

    # The running worker's sweep begins with this read (B's recover_orphans() does not use it).
    monkeypatch.setattr(maintenance, "earliest_lease_expiry", blocked_sweep)
    started = threading.Event()
    release = threading.Event()

    @a.handler("HELD")
    def held(job: Any) -> None:
        started.set()
        assert release.wait(30)

    job = a.enqueue("HELD", {})
    a.start_polling()
    try:
        assert started.wait(10)
        assert sweeping.wait(10)
        holds_for(
            lambda: b.recover_orphans() == (0, 0) and job_model.objects.get(id=job.id).status == "processing",
            duration=3.0,
            what="A's live job keeps its lease while A's sweep is blocked",
        )
    finally:
        release.set()
        gate.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert job_model.objects.get(id=job.id).attempts == 1


def test_the_poller_survives_an_error_after_a_claim_and_strands_nothing(make_queue, job_model) -> None:
    queue = make_queue(concurrency=2)
    ran: list[int] = []
    queue.register_handler("N", lambda job: ran.append(job.data["n"]))
    boom = threading.Event()
    real_now = queue.store.now

    def now() -> Any:
        # The first store clock read of the poller thread after a claim fails once.
        if boom.is_set() and threading.current_thread().name.endswith("-poller"):
            boom.clear()
            raise RuntimeError("injected failure after the claim")
        return real_now()

    class AfterClaim(Middleware):
        armed = True

        def after_claim(self, q: Any, doc: dict[str, Any]) -> None:
            if AfterClaim.armed:
                AfterClaim.armed = False
                boom.set()

    queue.store.now = now  # type: ignore[method-assign]
    queue.add_middleware(AfterClaim())
    first = [queue.enqueue("N", {"n": i}) for i in range(2)]
    queue.start_polling()
    wait_until(lambda: not boom.is_set() and not AfterClaim.armed, timeout=10)
    # The jobs of that claim run (or went back to the queue and then ran), and polling goes on.
    wait_until(lambda: all(job_model.objects.get(id=j.id).status == "completed" for j in first), timeout=20)
    later = queue.enqueue("N", {"n": 10})
    wait_until(lambda: job_model.objects.get(id=later.id).status == "completed", timeout=20)
    assert queue.running
    assert sorted(ran) == [0, 1, 10]


def test_a_partly_applied_batch_claim_runs_the_jobs_it_leased(make_queue, job_model, raw_db) -> None:
    # One hand-edited document among the most urgent makes update_many fail
    # partway; the jobs it had already leased must run, not wait out a lease.
    queue = make_queue(concurrency=4, max_retries=0, lease_ms=30_000, heartbeat_interval_ms=5_000)
    ran: list[int] = []
    queue.register_handler("N", lambda job: ran.append(job.data["n"]))
    jobs = [queue.enqueue("N", {"n": i}, priority=10 - i) for i in range(5)]
    bad = jobs[2]
    job_model._get_collection().update_one({"_id": bad.id}, {"$set": {"attempts": "x"}})
    queue.start_polling()
    healthy = [j for j in jobs if j.id != bad.id]
    wait_until(
        lambda: all(job_model._get_collection().find_one({"_id": j.id})["status"] == "completed" for j in healthy),
        timeout=15,
        what="every healthy job completes well within its lease",
    )
    assert sorted(ran) == [0, 1, 3, 4]
    wait_until(lambda: job_model._get_collection().find_one({"_id": bad.id})["status"] == "failed", timeout=15)


def test_a_lost_batch_claim_race_is_not_an_empty_queue(make_queue, job_model, raw_db) -> None:
    # Between this worker's read and its update, a rival takes every
    # candidate. The poller must claim again at once, not back off 5 s.
    queue = make_queue(
        concurrency=3, poll_interval_base_ms=5_000, poll_interval_max_ms=5_000, change_stream_wakeups=False
    )
    done: list[int] = []
    queue.register_handler("N", lambda job: done.append(job.data["n"]))
    jobs = [queue.enqueue("N", {"n": i}, priority=10 - i) for i in range(6)]
    stolen = [j.id for j in jobs[:3]]
    collection = job_model._get_collection()
    raced = threading.Event()
    store_class = type(queue.store)

    class Racing(store_class):  # type: ignore[misc, valid-type]
        @property
        def collection(self) -> Any:
            real = super().collection
            if raced.is_set():
                return real
            return RivalFirst(real)

    class RivalFirst:
        def __init__(self, real: Any) -> None:
            self._real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def update_many(self, *args: Any, **kwargs: Any) -> Any:
            if not raced.is_set():
                raced.set()
                collection.update_many(
                    {"_id": {"$in": stolen}}, {"$set": {"status": "processing", "lease_token": "rival"}}
                )
            return self._real.update_many(*args, **kwargs)

    queue.store.__class__ = Racing
    started = time.monotonic()
    queue.start_polling()
    wait_until(lambda: len(done) == 3, timeout=15)
    assert raced.is_set()
    assert time.monotonic() - started < 4.0, "the poller backed off after losing a race"
    assert sorted(done) == [3, 4, 5]


class Outcomes(Middleware):
    def __init__(self) -> None:
        self.failed: list[Any] = []
        self.cancelled: list[Any] = []
        self.lease_lost: list[Any] = []

    def on_failed(self, queue: Any, doc: dict[str, Any], *, exc: BaseException) -> None:
        self.failed.append(doc["_id"])

    def on_cancelled(self, queue: Any, job_id: Any) -> None:
        self.cancelled.append(job_id)

    def on_lease_lost(self, queue: Any, doc: dict[str, Any]) -> None:
        self.lease_lost.append(doc["_id"])


def test_a_job_cancelled_during_its_last_attempt_ends_cancelled(make_queue, job_model) -> None:
    # The handler raises before any heartbeat delivered the cancel request.
    queue = make_queue(concurrency=1, max_retries=0, lease_ms=30_000, heartbeat_interval_ms=10_000)
    outcomes = Outcomes()
    queue.add_middleware(outcomes)
    started, release = threading.Event(), threading.Event()

    @queue.handler("LAST")
    def last(job: Any) -> None:
        started.set()
        assert release.wait(30)
        raise RuntimeError("failed after the cancel request")

    job = queue.enqueue("LAST", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.cancel_job(job.id)
    release.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status in ("failed", "cancelled"))
    assert job_model.objects.get(id=job.id).status == "cancelled"
    wait_until(lambda: outcomes.cancelled == [job.id])
    assert outcomes.failed == []


def test_a_shutdown_requeue_of_a_last_attempt_whose_cancel_was_requested_ends_cancelled(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1, max_retries=0, lease_ms=30_000, heartbeat_interval_ms=10_000)
    outcomes = Outcomes()
    queue.add_middleware(outcomes)
    started, release = threading.Event(), threading.Event()

    @queue.handler("LAST")
    def last(job: Any) -> None:
        started.set()
        assert release.wait(30)

    job = queue.enqueue("LAST", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.cancel_job(job.id)
    try:
        assert queue.worker.stop(0.2, requeue_running=True) is False
        getattr(queue.worker, "requeue_abandoned", lambda: None)()  # what the exit hook does
        assert job_model.objects.get(id=job.id).status == "cancelled"
        assert outcomes.cancelled == [job.id]
        assert outcomes.failed == []
    finally:
        release.set()


def test_progress_of_an_earlier_attempt_is_cleared_when_the_job_is_claimed_again(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1, retry_delay_ms=10)
    seen: list[Any] = []

    @queue.handler("P")
    def p(job: Any) -> None:
        seen.append(job_model._get_collection().find_one({"_id": job.id}).get("progress"))
        if job.attempts == 1:
            job.report_progress(50, "half way")
            raise RuntimeError("try again")

    job = queue.enqueue("P", {})
    queue.start_polling()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=20)
    assert not seen[1], seen  # nothing left over from the first attempt


def test_a_failed_heartbeat_keeps_the_progress_report_it_carried(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1, progress_min_interval_ms=600_000, heartbeat_interval_ms=200)
    reported, release = threading.Event(), threading.Event()
    hold = threading.Event()
    failed_once = threading.Event()
    real = queue.store.jobs.heartbeat

    def heartbeat(leases: Any, progress: Any = None, claims: Any = None) -> Any:
        while hold.is_set():
            time.sleep(0.01)
        if progress and not failed_once.is_set():
            failed_once.set()
            raise RuntimeError("heartbeat failed")
        return real(leases, progress, claims)

    queue.store.jobs.heartbeat = heartbeat  # type: ignore[method-assign]

    @queue.handler("P")
    def p(job: Any) -> None:
        job.report_progress(10, "first")  # written at once
        hold.set()
        job.report_progress(60, "buffered")  # throttled: the next heartbeat carries it
        hold.clear()
        reported.set()
        assert release.wait(30)

    job = queue.enqueue("P", {})
    queue.start_polling()
    try:
        assert reported.wait(10)
        wait_until(failed_once.is_set, timeout=10)
        wait_until(
            lambda: (job_model._get_collection().find_one({"_id": job.id}).get("progress") or {}).get("percent") == 60,
            timeout=10,
            what="the next heartbeat writes the report the failed one took",
        )
    finally:
        release.set()


def test_a_heartbeat_racing_the_completion_does_not_report_a_lost_lease(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1, heartbeat_interval_ms=200)
    claimed_job = queue.enqueue("Q", {})
    claimed = queue.store.jobs.claim(["Q"], ["default"], queue.worker.owner)
    assert claimed is not None and claimed.id == claimed_job.id
    assert queue.store.jobs.complete(claimed, None)
    beat = queue.store.jobs.heartbeat({claimed.id: claimed.token})  # read its leases before the completion landed
    assert beat.lost == set()

    outcomes = Outcomes()
    queue.add_middleware(outcomes)
    job = queue.enqueue("R", {})
    done = threading.Event()
    real = queue.store.jobs.heartbeat

    def late_heartbeat(leases: Any, progress: Any = None, claims: Any = None) -> Any:
        if job.id in leases and not done.is_set():
            wait_until(lambda: job_model._get_collection().find_one({"_id": job.id})["status"] == "completed")
            threading.Timer(0.3, done.set).start()
        return real(leases, progress, claims)

    class HoldAfterProcess(Middleware):
        def after_process(self, q: Any, j: Any, **kwargs: Any) -> None:
            done.wait(5)  # keeps the run in the table while the racing beat's answer arrives

    queue.add_middleware(HoldAfterProcess())
    queue.store.jobs.heartbeat = late_heartbeat  # type: ignore[method-assign]
    queue.register_handler("R", lambda j: time.sleep(0.5))
    queue.start_polling()
    wait_until(done.is_set, timeout=20)
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert outcomes.lease_lost == []
