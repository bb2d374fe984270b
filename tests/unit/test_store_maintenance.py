"""The maintenance reads work on mongomock too, which app test suites run the queue on."""

from __future__ import annotations

from typing import Any

from conftest import OrgJob


def test_hygiene_and_lease_sweep_reads_run_on_mongomock(queue: Any) -> None:
    queue.register_handler("t", lambda job: None)
    job = queue.enqueue("t", {})
    OrgJob._get_collection().insert_one({"type": 5, "status": "pending", "queue": "default", "run_at": "soon"})
    found = queue.store.admin.malformed_jobs()
    assert [d["type"] for d in found] == [5]
    assert queue.store.jobs.expired_leases() == []
    assert queue.get_job(job.id).status == "pending"
