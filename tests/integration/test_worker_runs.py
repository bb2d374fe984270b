"""The worker's runs under adversarial timing: blocked maintenance, failing poller steps, partial claims, lost races."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import holds_for, wait_until

from mongo_job_queue import Middleware


def test_a_blocked_maintenance_step_does_not_delay_heartbeats(make_queue, job_model) -> None:
    # The sweep of worker A hangs (a slow query on its connection); its
    # heartbeat must go on, so worker B never takes A's live job.
    lease = {"lease_ms": 1_000, "heartbeat_interval_ms": 200, "sweep_interval_ms": 200}
    a = make_queue(concurrency=1, **lease)
    b = make_queue(**lease)
    gate = threading.Event()
    sweeping = threading.Event()
    real_expired = a.store.expired_leases

    def blocked_sweep(*args: Any, **kwargs: Any) -> Any:
        sweeping.set()
        assert gate.wait(30)
        return real_expired(*args, **kwargs)

    a.store.expired_leases = blocked_sweep  # type: ignore[method-assign]
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
