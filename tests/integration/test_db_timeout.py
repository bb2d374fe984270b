"""Every database call the queue makes is time-bounded (``db_timeout_ms``), and a timeout is retried.

The server holds the queue's connection (failCommand ``blockConnection``)
far longer than the lease, as a connection cut by a network partition would
hang. Without a client-side bound pymongo waits for the reply; with it, the
try fails after ``db_timeout_ms`` and the retry, on a fresh connection,
succeeds. A timeout is never taken for a lost lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import mongoengine
import pytest
from pymongo.errors import ServerSelectionTimeoutError

from integration.models import APP_NAME
from mongo_job_queue import BaseJob, create_job_queue

pytestmark = pytest.mark.integration

#: Longer than the lease (3 s in the test config), far longer than the bound (1.5 s derived).
STALL = {"blockConnection": True, "blockTimeMS": 8_000, "errorCode": 11602}


def _timed(fn: Callable[[], Any], limit: float) -> tuple[Any, float]:
    """Run ``fn`` in a thread; fail if it has not returned after ``limit`` seconds."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"the call was still blocked after {limit}s: it has no time bound"
    if "error" in out:
        raise out["error"]
    return out.get("value"), elapsed


def _claimed(queue):
    queue.register_handler("JOB", lambda job: None)
    queue.enqueue("JOB", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None
    return claimed


def test_a_claim_on_a_stalled_connection_is_bounded_and_retried(make_queue, failpoint) -> None:
    queue = make_queue()
    queue.register_handler("JOB", lambda job: None)
    job = queue.enqueue("JOB", {})
    queue.store.now()  # the first clock sync is not part of the claim
    failpoint(["findAndModify"], 1, **STALL)
    claimed, elapsed = _timed(queue.worker.claim_one, limit=6.0)
    assert claimed is not None and claimed.id == job.id
    assert elapsed < 6.0
    assert queue.store.admin.get(job.id)["attempts"] == 1


def test_a_heartbeat_on_a_stalled_connection_keeps_the_lease(make_queue, failpoint) -> None:
    queue = make_queue()
    claimed = _claimed(queue)
    failpoint(["update"], 1, **STALL)
    beat, _ = _timed(lambda: queue.store.jobs.heartbeat({claimed.id: claimed.token}), limit=6.0)
    assert beat.lost == set(), "a timed-out heartbeat was reported as a lost lease"
    doc = queue.store.admin.get(claimed.id)
    assert doc["status"] == "processing" and doc["lease_token"] == claimed.token


def test_a_completion_on_a_stalled_connection_is_recorded(make_queue, failpoint) -> None:
    queue = make_queue()
    claimed = _claimed(queue)
    failpoint(["update"], 1, **STALL)
    written, _ = _timed(lambda: queue.store.jobs.complete(claimed, {"ok": 1}), limit=6.0)
    assert written is True, "a timed-out completion was reported as a lost lease"
    assert queue.store.admin.get(claimed.id)["status"] == "completed"


def test_a_change_stream_read_on_a_stalled_connection_is_bounded(make_queue, failpoint) -> None:
    queue = make_queue()
    queue.store.now()
    stream = queue.store.jobs.watch_new_jobs(["JOB"], ["default"], resume_after=None, max_await_ms=300)
    try:
        failpoint(["getMore"], 1, **STALL)
        started = time.monotonic()
        with pytest.raises(Exception) as info:
            _timed(stream.try_next, limit=6.0)
        assert getattr(info.value, "timeout", False), f"not a timeout: {info.value!r}"
        assert time.monotonic() - started < 6.0
        # The stream is still usable once the connection is healthy again.
        assert _timed(stream.try_next, limit=6.0)[0] is None
    finally:
        stream.close()


class ShortTimeoutJob(BaseJob):
    meta = {"collection": "jobs", "db_alias": "mjq_short_socket_timeout"}


def test_a_shorter_socket_timeout_of_the_app_is_kept(mongodb_uri, db_name, job_model, failpoint) -> None:
    """Inside pymongo.timeout the client's socketTimeoutMS is ignored; the queue keeps it as the bound."""
    mongoengine.connect(
        db=db_name,
        host=mongodb_uri,
        alias="mjq_short_socket_timeout",
        uuidRepresentation="standard",
        appname=APP_NAME,
        socketTimeoutMS=300,
    )
    try:
        queue = create_job_queue(job_model=ShortTimeoutJob, config={"lease_ms": 30_000})
        assert queue.config.db_timeout_s == 5.0
        queue.register_handler("JOB", lambda job: None)
        queue.enqueue("JOB", {})
        queue.store.now()
        failpoint(["findAndModify"], 1, **STALL)
        claimed, elapsed = _timed(queue.worker.claim_one, limit=6.0)
        assert claimed is not None
        assert elapsed < 2.5, f"the claim waited {elapsed:.1f}s: the app's 0.3 s socket timeout was not kept"
    finally:
        mongoengine.disconnect(alias="mjq_short_socket_timeout")


class UnreachableJob(BaseJob):
    meta = {"collection": "jobs", "db_alias": "mjq_unreachable"}


@pytest.mark.parametrize("call", ["start_polling", "ensure_indexes", "enqueue"])
def test_a_first_use_of_an_unreachable_server_fails_within_the_bound(call: str) -> None:
    """The first use builds indexes under a long bound; server selection must not get it too.

    Inside ``pymongo.timeout`` server selection waits for the remaining time,
    not ``serverSelectionTimeoutMS``: under the index build's minutes a start
    against a server that is down would hang that long on every try, and a
    web app's background start would neither report the failure nor retry.
    """
    mongoengine.register_connection(
        "mjq_unreachable", host="mongodb://127.0.0.1:1/down", uuidRepresentation="standard", connect=False
    )
    try:
        queue = create_job_queue(job_model=UnreachableJob, config={"db_timeout_ms": 300, "db_retry_attempts": 2})
        queue.register_handler("JOB", lambda job: None)
        run = {
            "start_polling": queue.start_polling,
            "ensure_indexes": queue.ensure_indexes,
            "enqueue": lambda: queue.enqueue("JOB", {}),
        }[call]
        with pytest.raises(ServerSelectionTimeoutError):
            _timed(run, limit=15.0)
        assert not queue.running
    finally:
        mongoengine.disconnect(alias="mjq_unreachable")


def test_a_shorter_server_selection_timeout_of_the_app_is_kept_at_the_first_use() -> None:
    """Inside pymongo.timeout serverSelectionTimeoutMS is ignored; the first use's reach keeps the app's shorter one."""
    mongoengine.register_connection(
        "mjq_unreachable",
        host="mongodb://127.0.0.1:1/down?serverSelectionTimeoutMS=300",
        uuidRepresentation="standard",
        connect=False,
    )
    try:
        queue = create_job_queue(job_model=UnreachableJob, config={"db_retry_attempts": 2})
        assert queue.config.db_timeout_s == 5.0
        queue.register_handler("JOB", lambda job: None)
        started = time.monotonic()
        with pytest.raises(ServerSelectionTimeoutError):
            _timed(queue.start_polling, limit=15.0)
        elapsed = time.monotonic() - started
        assert elapsed < 4.0, f"the start took {elapsed:.1f}s: two tries of the 5 s bound, not of the app's 0.3 s"
    finally:
        mongoengine.disconnect(alias="mjq_unreachable")
