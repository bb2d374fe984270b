"""Limits in one process over the wire: mutex keys, caps per key, throttling, rates, and what shows."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from helpers import wait_until
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect

from mongo_job_queue.limits import Limit
from mongo_job_queue.model import LeaseOwner
from mongo_job_queue.store import rates
from mongo_job_queue.store.limit_defs import LimitDefinitions
from mongo_job_queue.store.limiter import Admission


class Peaks:
    """Counts the runs in flight per key under a lock, and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: Counter[Any] = Counter()
        self.peak: Counter[Any] = Counter()
        self.starts: list[tuple[Any, float]] = []

    def run(self, key: Any, seconds: float) -> None:
        with self.lock:
            self.running[key] += 1
            self.peak[key] = max(self.peak[key], self.running[key])
            self.starts.append((key, time.monotonic()))
        time.sleep(seconds)
        with self.lock:
            self.running[key] -= 1


def test_mutex_jobs_run_one_at_a_time_per_key_without_using_attempts(make_queue, job_model) -> None:
    queue = make_queue(concurrency=8)
    peaks = Peaks()
    queue.register_handler("M", lambda job: peaks.run(job.mutex_key, 0.01))
    queue.enqueue_many({"job_type": "M", "mutex_key": f"k{n % 3}"} for n in range(30))
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] == 30, timeout=60, what="30 completed")
    assert peaks.peak == {"k0": 1, "k1": 1, "k2": 1}
    assert {j.attempts for j in job_model.objects} == {1}
    assert all(row["running"] == 0 for row in queue.limits()["keys"])


def test_a_cap_per_key_is_shared_by_two_queues_and_reached(make_queue, job_model) -> None:
    a, b = make_queue(concurrency=6), make_queue(concurrency=6)
    a.limit("per-org", key="organization", max_running=2)
    peaks = Peaks()
    for queue in (a, b):
        queue.register_handler("O", lambda job: peaks.run(job.organization, 0.15))
    a.enqueue_many({"job_type": "O", "organization": f"org{n % 3}"} for n in range(24))
    a.enqueue_many({"job_type": "O"} for _ in range(4))  # no organization: not limited
    a.start_polling()
    b.start_polling()
    wait_until(lambda: a.counts()["completed"] == 28, timeout=90, what="28 completed")
    assert peaks.peak == {"org0": 2, "org1": 2, "org2": 2, None: peaks.peak[None]}
    assert {j.attempts for j in job_model.objects} == {1}


def test_a_per_handler_cap_without_a_key(make_queue) -> None:
    queue = make_queue(concurrency=6)
    queue.limit("exports", job_types=["EXPORT"], max_running=1)
    peaks = Peaks()
    queue.register_handler("EXPORT", lambda job: peaks.run("export", 0.05))
    queue.register_handler("OTHER", lambda job: peaks.run("other", 0.05))
    queue.enqueue_many([{"job_type": "EXPORT"}] * 6 + [{"job_type": "OTHER"}] * 6)
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] == 12, timeout=60, what="12 completed")
    assert peaks.peak["export"] == 1
    assert peaks.peak["other"] > 1


def test_a_delayed_job_does_not_hold_its_key(make_queue) -> None:
    queue = make_queue(concurrency=2)
    ran: list[str] = []
    queue.register_handler("M", lambda job: ran.append(job.data["n"]))
    queue.enqueue("M", {"n": "later"}, mutex_key="k", delay_ms=60_000)
    queue.enqueue("M", {"n": "now"}, mutex_key="k")
    queue.start_polling()
    wait_until(lambda: ran == ["now"], timeout=30, what="the due job ran")


def test_a_limit_defined_by_another_process_is_applied(make_queue) -> None:
    worker, admin = make_queue(concurrency=6), make_queue()
    peaks = Peaks()
    worker.register_handler("O", lambda job: peaks.run(job.organization, 0.1))
    worker.start_polling()
    admin.limit("per-org", key="organization", max_running=1)
    time.sleep(1.2)  # the worker re-reads the definitions at most every second (REFRESH_S)
    admin.enqueue_many({"job_type": "O", "organization": "acme"} for _ in range(6))
    wait_until(lambda: admin.counts()["completed"] == 6, timeout=60, what="6 completed")
    assert peaks.peak["acme"] == 1


def test_a_crashed_holder_expires_with_its_lease(make_queue, raw_db) -> None:
    queue = make_queue(concurrency=2, lease_ms=1_000, heartbeat_interval_ms=200)
    queue.limit("per-org", key="organization", max_running=1)
    stale = {"job": "gone", "token": "dead", "until": queue.store.now() - timedelta(milliseconds=1)}
    from mongo_job_queue.store.limiter import limiter_id

    raw_db.jobs_limiters.insert_one(
        {"_id": limiter_id("per-org", "acme"), "limit": "per-org", "value": "acme", "holders": [stale]}
    )
    queue.register_handler("O", lambda job: None)
    queue.enqueue("O", {}, organization="acme")
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] == 1, timeout=30, what="the job ran past the dead holder")
    left = raw_db.jobs_limiters.find_one()
    assert left is None or left["holders"] == []  # the start's limiter sweep may have deleted it, idle by then


def test_a_live_holder_is_kept_by_the_heartbeat(make_queue) -> None:
    queue = make_queue(concurrency=2, lease_ms=1_000, heartbeat_interval_ms=200)
    queue.limit("per-org", key="organization", max_running=1)
    release = threading.Event()
    peaks = Peaks()

    @queue.handler("O")
    def run(job: Any) -> None:
        peaks.run(job.organization, 0)
        if job.data["n"] == 0:
            assert release.wait(30)

    queue.enqueue("O", {"n": 0}, organization="acme")
    queue.start_polling()
    wait_until(lambda: len(peaks.starts) == 1, timeout=30, what="the first job runs")
    queue.enqueue("O", {"n": 1}, organization="acme")
    time.sleep(2.5)  # longer than two leases: only the heartbeat keeps the holder
    assert len(peaks.starts) == 1
    release.set()
    wait_until(lambda: queue.counts()["completed"] == 2, timeout=30, what="both ran")


def test_a_throttle_uses_no_attempt_and_waits_its_delay(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    seen: list[int] = []

    @queue.handler("T")
    def run(job: Any) -> None:
        seen.append(job.attempts)
        if len(seen) == 1:
            job.throttle(1_500)

    job = queue.enqueue("T", {}, mutex_key="api")
    queue.start_polling()
    wait_until(lambda: len(seen) == 1, timeout=30, what="the first run")
    wait_until(lambda: job_model.objects.get(id=job.id).status == "pending", timeout=30, what="back to pending")
    stored = job_model.objects.get(id=job.id)
    assert stored.attempts == 0 and stored.errors == []
    delay = stored.run_at - stored.started_at
    assert timedelta(milliseconds=1_500) <= delay <= timedelta(milliseconds=2_500), delay
    wait_until(lambda: queue.counts()["completed"] == 1, timeout=30, what="the second run")
    assert seen == [1, 1]
    assert job_model.objects.get(id=job.id).attempts == 1


def test_a_throttle_after_a_lost_lease_writes_nothing(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {})
    claimed = queue.store.jobs.claim(["T"], ["default"], queue.worker.poller.owner)
    assert claimed is not None
    stale = type(claimed)(dict(claimed.doc), "not-the-token")
    assert queue.store.jobs.throttle(stale, queue.store.now()) is False
    assert job_model.objects.get(id=job.id).status == "processing"
    assert queue.store.jobs.throttle(claimed, queue.store.now()) is True
    assert job_model.objects.get(id=job.id).attempts == 0


def test_a_rate_spaces_admissions_by_server_time_and_reserves_exact_starts(make_queue, job_model) -> None:
    queue = make_queue(concurrency=4)
    queue.limit("api", job_types=["R"], rate="5/s")
    queue.register_handler("R", lambda job: None)
    queue.enqueue_many([{"job_type": "R"}] * 8)
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] == 8, timeout=60, what="8 completed")
    jobs = list(job_model.objects)
    # A job over the rate waited for its reserved start: its run_at was set to it, by server
    # time, and it was claimed no earlier; one admitted at once counts from its claim.
    admitted = sorted(j.run_at if j.run_at > j.created_at else j.started_at for j in jobs)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(admitted)]
    assert min(gaps) >= 0.199, gaps
    assert all(j.started_at >= j.run_at for j in jobs)
    assert sum(1 for j in jobs if j.run_at > j.created_at) >= 4  # most waited for an exact start
    assert {j.attempts for j in jobs} == {1}  # waiting used no attempt


def test_a_tenant_with_a_backlog_does_not_starve_a_small_one(make_queue) -> None:
    producer = make_queue(lease_ms=10_000)  # its bulk inserts run beside a busy worker
    producer.limit("tenants", key="organization", fair=True)
    worker = make_queue(concurrency=4, lease_ms=10_000)
    order: list[str] = []
    lock = threading.Lock()

    def run(job: Any) -> None:
        with lock:
            order.append(job.organization)

    worker.register_handler("F", run)
    worker.start_polling()
    for _ in range(10):
        producer.enqueue_many([{"job_type": "F", "organization": "A"}] * 200)
    wait_until(lambda: len(order) >= 5, timeout=60, what="A's backlog is being worked")
    with lock:
        before = len(order)
    producer.enqueue_many([{"job_type": "F", "organization": "B"}] * 20)
    wait_until(lambda: order.count("B") == 20, timeout=120, what="B's 20 jobs done")
    worker.stop(timeout=10)
    with lock:
        after = order[before:]
    last_b = max(i for i, org in enumerate(after) if org == "B")
    a_meanwhile = after[:last_b].count("A")
    assert a_meanwhile < 200, a_meanwhile
    assert a_meanwhile <= 20 + 3 * 4, a_meanwhile  # one A per B, a claim or two of slack


def test_limits_show_in_the_cli_and_in_prometheus(make_queue) -> None:
    import io
    import json

    from mongo_job_queue import cli
    from mongo_job_queue.contrib.prometheus import QueueStatsCollector

    queue = make_queue()
    queue.limit("per-org", key="organization", max_running=2)
    queue.register_handler("O", lambda job: None)
    queue.enqueue("O", {}, organization="acme")
    claimed = queue.store.jobs.claim(["O"], ["default"], queue.worker.poller.owner)
    assert claimed is not None
    out = io.StringIO()
    assert cli.main(["limits"], queue=queue, out=out, err=io.StringIO()) == 0
    assert "per-org: key=organization max_running=2" in out.getvalue()
    assert "per-org[acme]: running 1/2" in out.getvalue()
    out = io.StringIO()
    assert cli.main(["stats"], queue=queue, out=out, err=io.StringIO()) == 0
    assert "limit per-org[acme]: running 1/2" in out.getvalue()
    out = io.StringIO()
    assert cli.main(["limits", "--json"], queue=queue, out=out, err=io.StringIO()) == 0
    [row] = [r for r in json.loads(out.getvalue())["keys"] if r["limit"] == "per-org"]
    assert (row["value"], row["running"], row["holders"]) == ("acme", 1, [str(claimed.id)])
    samples = {
        (metric.name, tuple(sample.labels.values())): sample.value
        for metric in QueueStatsCollector(queue, cache_seconds=0).collect()
        for sample in metric.samples
    }
    assert samples[("mongo_job_queue_limit_running", ("per-org",))] == 1
    assert samples[("mongo_job_queue_limit_max_running", ("per-org",))] == 2
    queue.store.limits.release(claimed.id, claimed.token)
    assert queue.limits()["keys"][0]["running"] == 0


def test_concurrent_claims_on_one_free_key_admit_exactly_one(make_queue, job_model) -> None:
    # Write skew: eight claimers, each of its own job type (so no two contend
    # for one job document), see the key free at the same moment; one atomic
    # admission lets exactly one of them in, round after round.
    queues = [make_queue() for _ in range(8)]
    for n, queue in enumerate(queues):
        queue.register_handler(f"M{n}", lambda job: None)
    queues[0].enqueue_many({"job_type": f"M{n % 8}", "mutex_key": "invoice:42"} for n in range(40))
    owner = queues[0].worker.poller.owner
    queues[0].store.limits.mark_mutex()
    lock = threading.Lock()
    for round_ in range(4):
        barrier = threading.Barrier(len(queues))
        got: list[Any] = []

        def claim(n: int, barrier: threading.Barrier = barrier, got: list[Any] = got) -> None:
            queue = queues[n]
            queue.store.limits.active()  # definitions read before the barrier: the claims start together
            barrier.wait(30)
            claimed = queue.store.jobs.claim([f"M{n}"], ["default"], owner)
            with lock:
                got.append((queue, claimed))

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(queues))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        won = [(queue, claimed) for queue, claimed in got if claimed is not None]
        assert len(won) == 1, f"round {round_}: {len(won)} claims of one mutex key"
        queue, claimed = won[0]
        assert queue.store.jobs.complete(claimed)
        queue.store.limits.release(claimed.id, claimed.token)


def test_a_chunk_leaves_its_limiters_when_it_ends(make_queue, raw_db) -> None:
    # A chunked handler's runs are runs like any other: once written, their holders go at once, not at lease expiry.
    queue = make_queue(lease_ms=60_000)
    queue.limit("per-org", key="organization", max_running=5)
    seen: list[int] = []
    queue.register_batch_handler("C", lambda jobs: seen.append(len(jobs)), max_size=3, max_wait_ms=100)
    queue.enqueue_many({"job_type": "C", "organization": "acme"} for _ in range(3))
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] == 3, timeout=30, what="the chunk completed")
    wait_until(
        lambda: all(not doc.get("holders") for doc in raw_db.jobs_limiters.find()),
        timeout=5,
        what="the chunk's holders released (a lease is 60 s: only the release can clear them this soon)",
    )
    assert sum(seen) == 3


def test_definitions_cached_before_the_first_mutex_key_still_admit_mutex_jobs(make_queue, job_model) -> None:
    """A worker's cached definitions (no mutex yet) must not claim two runs of one mutex key (review: stale_cache)."""
    worker, other = make_queue(), make_queue()
    worker.limit("per-org", key="organization", max_running=5)
    assert [limit.name for limit in worker.store.limits.active()] == ["per-org"]  # cached for REFRESH_S
    other.enqueue("M", {}, mutex_key="k")
    other.enqueue("M", {}, mutex_key="k")
    got = worker.store.jobs.claim_batch(["M"], ["default"], LeaseOwner.current(), 2)
    assert [c.doc.get("mutex_key") for c in got].count("k") <= 1


def test_a_claim_whose_reply_is_lost_keeps_its_job_and_spends_its_rate_once(make_queue, job_model, monkeypatch) -> None:
    """The claim update applied, its reply lost: the retry must not spend the rate again and drop the job."""
    queue = make_queue()
    queue.limit("slow", job_types=["R"], rate="1/min")
    job = queue.enqueue("R", {})
    real = Collection.update_one
    lost = threading.Event()

    def reply_lost(self: Any, flt: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, flt, update, *args, **kwargs)
        if not lost.is_set() and self.name == job_model._get_collection_name() and "lease_token" in str(update):
            lost.set()
            raise AutoReconnect("reply lost")
        return result

    monkeypatch.setattr(Collection, "update_one", reply_lost)
    got = queue.store.jobs.claim_batch(["R"], ["default"], LeaseOwner.current(), 2)
    monkeypatch.setattr(Collection, "update_one", real)
    assert lost.is_set()
    assert [c.doc["_id"] for c in got] == [job.id]
    stored = job_model.objects.get(id=job.id)
    assert (stored.status, stored.attempts, stored.lease_token) == ("processing", 1, got[0].token)


@pytest.mark.parametrize("rate", ["2000/s", "1001/s", "3/ms"])
def test_a_rate_faster_than_one_start_a_millisecond_gives_one_start_at_an_instant(make_queue, rate) -> None:
    """Its interval is under a millisecond: a state kept as a BSON date lost it, and every start was given."""
    queue = make_queue()
    limit = Limit("fast", rate=rate, job_types=("R",))
    now = queue.store.now().replace(microsecond=0)
    granted = sum(rates.spend(queue.store.limits.limiters, "fast-lid", limit, "", now) is not None for _ in range(20))
    assert granted == 1


@pytest.mark.parametrize("rate", ["600/s", "700/s", "3/ms"])
def test_greedy_claimers_get_no_more_starts_than_the_rate(make_queue, rate) -> None:
    """Claimers asking every millisecond for one second: the rate's count (plus the first), not more."""
    queue = make_queue()
    limit = Limit("r", rate=rate, job_types=("R",))
    count, period_ms = limit.rate_ms or (0, 1)
    most = count * 1_000 // period_ms + 1
    start = queue.store.now().replace(microsecond=0)
    now, granted = start, 0
    while now < start + timedelta(seconds=1) and granted <= most:  # a broken rate gives every start: stop early
        if rates.spend(queue.store.limits.limiters, "r-lid", limit, "", now) is not None:
            granted += 1
        else:
            now += timedelta(milliseconds=1)
    assert granted <= most


def test_a_holder_taken_over_after_its_lease_lapsed_is_fenced_out(make_queue, job_model, raw_db) -> None:
    """A late heartbeat must not revive a run whose key another run was admitted to meanwhile.

    The first run's lease and holder lapse (a heartbeat late under load); a
    second worker pulls the lapsed holder and is admitted to the key. The
    first run must then be fenced out (its lease revoked), or two runs of the
    key would both hold live leases.
    """
    a, b = make_queue(), make_queue()
    first = a.enqueue("M", {}, mutex_key="k")
    second = a.enqueue("M", {}, mutex_key="k", priority=-1)
    held = a.store.jobs.claim(["M"], ["default"], a.worker.poller.owner)
    assert held is not None and held.id == first.id
    assert b.store.jobs.claim(["M"], ["default"], b.worker.poller.owner) is None  # the key is held
    past = a.store.now() - timedelta(seconds=5)
    raw_db.jobs.update_one({"_id": first.id}, {"$set": {"lease_expires_at": past}})
    raw_db.jobs_limiters.update_many({}, {"$set": {"holders.$[].until": past}})
    taken = b.store.jobs.claim(["M"], ["default"], b.worker.poller.owner)
    assert taken is not None and taken.id == second.id
    # The late heartbeat finds the first lease gone; its completion writes nothing.
    assert first.id in a.store.jobs.heartbeat({held.id: held.token}).lost
    assert a.store.jobs.complete(held) is False
    assert job_model.objects.get(id=first.id).status == "processing"
    # The old run's release cannot remove the new holder (fenced by job and token).
    lids = tuple(d["_id"] for d in raw_db.jobs_limiters.find())
    a.store.limits.hold(Admission(held.id, held.token, lids))
    a.store.limits.release(held.id, held.token)
    holders = [h["job"] for d in raw_db.jobs_limiters.find() for h in d.get("holders") or []]
    assert holders == [second.id]


def test_a_worker_without_limits_reads_no_definitions_and_sees_a_new_limit_at_its_next_pause_read(
    make_queue, monkeypatch
) -> None:
    worker, admin = make_queue(), make_queue()
    reads: list[Any] = []
    real = LimitDefinitions.collection
    monkeypatch.setattr(LimitDefinitions, "collection", property(lambda self: reads.append(self) or real.fget(self)))
    mine = worker.store.limits.definitions
    worker.register_handler("T", lambda job: None)
    worker.enqueue_many([{"job_type": "T"}] * 5)
    poller = worker.worker.poller
    for _ in range(3):
        poller.forget_pause_state()  # the pause state read as after each pause_refresh_ms
        assert poller.claim_one() is not None
    assert [r for r in reads if r is mine] == []  # no limit was ever stored: nothing read
    admin.limit("one-t", job_types=["T"], max_running=1)
    poller.forget_pause_state()
    assert poller.claim_one() is not None  # the three earlier runs were claimed before the limit
    poller.forget_pause_state()
    assert poller.claim_one() is None  # the limit is full
    assert [r for r in reads if r is mine] == [mine]  # read once, when it moved
