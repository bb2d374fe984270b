"""The in-flight table is keyed by run (job id and lease token), not by job id."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from helpers import holds_for, wait_until

from mongo_job_queue.config import load_config
from mongo_job_queue.middleware import MiddlewareChain
from mongo_job_queue.store import ClaimedJob
from mongo_job_queue.store.leases import Heartbeat
from mongo_job_queue.worker.inflight import InflightTable, run_key
from mongo_job_queue.worker.leases import LeaseKeeper


def _claim(job_id: ObjectId, token: str) -> ClaimedJob:
    return ClaimedJob({"_id": job_id, "attempts": 1}, token)


def test_two_runs_of_one_job_have_their_own_entries() -> None:
    table = InflightTable()
    job_id = ObjectId()
    old, new = _claim(job_id, "old"), _claim(job_id, "new")
    old_run = table.add(old)
    new_run = table.add(new)
    assert old_run.lease_lost.is_set()  # the newer claim replaced its token on the document
    assert not new_run.lease_lost.is_set()
    assert table.leases() == {job_id: "new"}
    table.remove(run_key(old))  # the old handler ends
    assert table.get(run_key(new)) is new_run
    assert table.leases() == {job_id: "new"}
    assert len(table) == 1


def test_a_buffered_completion_keeps_its_lease_until_acknowledged() -> None:
    table = InflightTable()
    claimed = _claim(ObjectId(), "t")
    table.add(claimed)
    table.begin_ack(claimed)
    table.remove(run_key(claimed))
    assert len(table) == 0 and table.busy()
    assert table.leases() == {claimed.id: "t"}
    table.end_ack(run_key(claimed))
    assert not table.busy()
    assert table.wait_idle(0)


def test_the_newest_run_s_token_is_renewed_whichever_run_s_completion_was_buffered_first() -> None:
    table = InflightTable()
    job_id = ObjectId()
    old, new = _claim(job_id, "old"), _claim(job_id, "new")
    table.add(old)
    table.add(new)
    for run in (new, old):  # the newer run finished first; the stale one's completion follows it
        table.begin_ack(run)
        table.remove(run_key(run))
    assert table.leases() == {job_id: "new"}
    table.end_ack(run_key(new))
    assert table.leases() == {job_id: "old"}  # only the stale run is left: its renewal reports it lost
    table.end_ack(run_key(old))
    assert table.leases() == {} and not table.busy()


class _Store:
    """Just enough of a store for a heartbeat: every renewal keeps every lease."""

    class jobs:
        @staticmethod
        def heartbeat(leases: Any, progress: Any = None, claims: Any = None) -> Heartbeat:
            return Heartbeat(set(), set())

    class limits:
        @staticmethod
        def keeping() -> bool:
            return False  # no abandoned handler holds limiter slots


def test_runs_coming_and_going_do_not_wake_the_heartbeat() -> None:
    # A busy worker adds and removes a run per job: the heartbeat beats at its interval, nothing
    # more, so it must not be woken each time (it was, twice per job, for a wait it resumed at once).
    table = InflightTable()
    keeper = LeaseKeeper(_Store(), table, load_config({"heartbeat_interval_ms": 60_000}), MiddlewareChain(None))  # type: ignore[arg-type]
    waits = []
    delay = keeper._delay
    keeper._delay = lambda failures: waits.append(failures) or delay(failures)  # type: ignore[method-assign]
    keeper.start()
    try:
        wait_until(lambda: waits, timeout=10, what="the heartbeat waiting for its next beat")
        settled = len(waits)
        for n in range(20):
            claimed = _claim(ObjectId(), f"t{n}")
            table.add(claimed)
            table.begin_ack(claimed)
            table.remove(run_key(claimed))
            table.end_ack(run_key(claimed))
        holds_for(lambda: len(waits) == settled, 0.5, what="the heartbeat left asleep")
    finally:
        keeper.release()
    wait_until(lambda: keeper.thread is None, timeout=10, what="a released heartbeat ending once the table is empty")


def test_a_released_heartbeat_ends_when_the_last_buffered_completion_lands() -> None:
    table = InflightTable()
    keeper = LeaseKeeper(_Store(), table, load_config({"heartbeat_interval_ms": 60_000}), MiddlewareChain(None))  # type: ignore[arg-type]
    claimed = _claim(ObjectId(), "t")
    table.add(claimed)
    keeper.start()
    table.begin_ack(claimed)
    table.remove(run_key(claimed))
    keeper.release()
    holds_for(lambda: keeper.thread is not None, 0.2, what="the heartbeat kept while a completion is buffered")
    table.end_ack(run_key(claimed))
    wait_until(lambda: keeper.thread is None, timeout=10, what="the heartbeat ending with the table empty")
