"""The worker registry over the wire server: live workers listed, a stopped one marked, a killed one gone stale."""

from __future__ import annotations

import os
import signal
import socket
from datetime import timedelta

import pytest
from helpers import wait_until

from mongo_job_queue.clock import utcnow
from mongo_job_queue.store.workers import WorkerDocs

pytestmark = pytest.mark.integration

APP = "integration.cli_app:make_queue"


def started(make_queue, worker_id: str, **config):
    queue = make_queue(worker_id=worker_id, concurrency=3, queues=["default", "mail"], **config)
    queue.register_handler("noop", lambda job: None)
    queue.start_polling()
    return queue


def by_worker(docs: WorkerDocs, **kwargs) -> dict[str, object]:
    return {info.worker_id: info for info in docs.list(**kwargs)}


def test_two_workers_are_listed_live_and_a_stopped_one_is_marked(make_queue, raw_db) -> None:
    first, second = started(make_queue, "reg-a"), started(make_queue, "reg-b")
    docs = WorkerDocs(first.store)
    seen = wait_until(lambda: (w := by_worker(docs)) and {"reg-a", "reg-b"} <= set(w) and w, what="both workers")
    a = seen["reg-a"]
    assert a.state == "live" and seen["reg-b"].state == "live"
    assert (a.host, a.pid) == (socket.gethostname(), os.getpid())
    assert a.queues == ["default", "mail"] and a.job_types == ["noop"] and a.concurrency == 3
    assert a.started_at is not None and a.last_seen is not None and a.in_flight == 0
    # Refreshed on the heartbeat's cadence (500 ms in the test config).
    first_seen = a.last_seen
    wait_until(lambda: by_worker(docs)["reg-a"].last_seen > first_seen, timeout=5, what="a second beat")

    assert second.stop(timeout=10)
    after = by_worker(docs)
    assert after["reg-b"].state == "stopped" and after["reg-b"].stopped_at is not None
    assert after["reg-a"].state == "live"
    # One document per process, in the jobs collection's sibling, with a TTL index on last_seen.
    assert raw_db["jobs_workers"].count_documents({}) == 2
    assert "mjq_workers_seen" in raw_db["jobs_workers"].index_information()


def test_a_restarted_worker_is_live_again(make_queue) -> None:
    queue = started(make_queue, "reg-c")
    docs = WorkerDocs(queue.store)
    wait_until(lambda: "reg-c" in by_worker(docs))
    assert queue.stop(timeout=10)
    assert by_worker(docs)["reg-c"].state == "stopped"
    queue.start_polling()
    wait_until(lambda: by_worker(docs)["reg-c"].state == "live", timeout=5, what="the restarted worker")


def test_a_sigkilled_worker_goes_stale(make_queue, spawn) -> None:
    local = started(make_queue, "reg-local")
    docs = WorkerDocs(local.store)
    proc = spawn("worker", "--app", APP, "--concurrency", "2", "--log-level", "INFO")
    try:
        killed = wait_until(
            lambda: next((w for w in docs.list() if w.pid == proc.pid), None), timeout=60, what="the spawned worker"
        )
        assert killed.state == "live" and killed.concurrency == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        frozen = next(w for w in docs.list() if w.pid == proc.pid)
        # It never marked itself stopped: readers judge it by last_seen against their bound.
        assert frozen.stopped_at is None
        wait_until(
            lambda: {w.pid: w.state for w in docs.list(stale_after=timedelta(seconds=2))}.get(proc.pid) == "gone",
            timeout=10,
            what="the killed worker to go stale",
        )
        mine = {w.worker_id: w.state for w in docs.list(stale_after=timedelta(seconds=2))}
        assert mine["reg-local"] == "live"  # beating every 500 ms, so within the same bound
        assert next(w for w in docs.list() if w.pid == proc.pid).last_seen == frozen.last_seen
    finally:
        if proc.poll() is None:
            proc.kill()


def test_each_worker_is_judged_by_its_own_heartbeat_not_the_readers(make_queue, raw_db) -> None:
    # A valid slow cadence (a beat every 8 s, a 20 s lease) beside a fast one (0.5 s, 3 s).
    started(make_queue, "reg-slow", lease_ms=20_000, heartbeat_interval_ms=8_000)
    started(make_queue, "reg-fast")
    # The reader (another process's UI, with the fast config) looks 10 s after the latest beats.
    reader = make_queue(sync_clock=False, clock=lambda: utcnow() + timedelta(seconds=10))
    docs = WorkerDocs(reader.store)
    wait_until(lambda: {"reg-slow", "reg-fast"} <= set(by_worker(docs)), what="both workers")
    states = {worker_id: info.state for worker_id, info in by_worker(docs).items()}
    # 10 s: within 3 writes of the slow one (every 32 s: 4 beats), past 3 of the fast one's (every 2 s).
    assert states == {"reg-slow": "live", "reg-fast": "gone"}
    stored = {doc["worker_id"]: doc["stale_after_ms"] for doc in raw_db["jobs_workers"].find()}
    assert stored == {"reg-slow": 96_000, "reg-fast": 6_000}
    # An explicit bound still judges every document alike.
    assert {info.state for info in docs.list(stale_after=timedelta(seconds=30))} == {"live"}
