"""The in-flight table is keyed by run (job id and lease token), not by job id."""

from __future__ import annotations

from bson import ObjectId

from mongo_job_queue.store import ClaimedJob
from mongo_job_queue.worker.inflight import InflightTable, run_key


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
