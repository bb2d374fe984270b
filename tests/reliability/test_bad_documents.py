"""Job documents edited by hand are failed with a clear reason; the worker keeps going.

Each case writes a broken document straight into the collection (as a
person with a shell would), next to healthy jobs, then runs a real worker
pool. The broken one must end ``failed`` with a ``MalformedJob`` error
naming the problem, its handler must never run, and the healthy jobs must
all complete.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from bson import ObjectId
from helpers import MISSING, stored_job, wait_until

pytestmark = pytest.mark.integration

NOW = datetime.utcnow() - timedelta(seconds=5)


def _base(**fields):
    # At the head of the queue, in front of the healthy jobs.
    return stored_job(NOW, **{"priority": 100, "run_at": NOW, **fields})


CASES = {
    "attempts is a string": (_base(attempts="three"), "'attempts' must be an integer"),
    "data is not a document": (_base(data="not a document"), "'data' must be a document"),
    "max_retries missing": (_base(max_retries=MISSING), "'max_retries' must be an integer"),
    "unknown status": (_base(status="paused-by-ops"), "unknown status 'paused-by-ops'"),
    "run_at is a string": (_base(run_at="tomorrow"), "'run_at' must be a date"),
    "type missing": (_base(type=MISSING), "'type' must be a non-empty string"),
    "errors not an array, lease expired": (
        _base(
            status="processing",
            attempts=1,
            errors="oops",
            lease_token="t",
            lease_expires_at=NOW - timedelta(minutes=1),
        ),
        "'errors' must be an array",
    ),
    "field the model does not know": (_base(colour="red"), "cannot be loaded as IntegrationJob"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_document_is_failed_and_the_worker_keeps_going(make_queue, job_model, raw_db, case) -> None:
    bad, reason = CASES[case]
    raw_db.jobs.insert_one(bad)
    queue = make_queue(concurrency=2, hygiene_interval_ms=200, sweep_interval_ms=200)
    ran: list[ObjectId] = []
    lock = threading.Lock()

    @queue.handler("WORK")
    def work(job) -> None:
        with lock:
            ran.append(job.id)

    healthy = [queue.enqueue("WORK", {"n": n}) for n in range(5)]
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.find_one({"_id": bad["_id"]})["status"] == "failed", timeout=20, what=case)
    wait_until(lambda: job_model.objects(id__in=[j.id for j in healthy], status="completed").count() == 5)
    stored = raw_db.jobs.find_one({"_id": bad["_id"]})
    assert stored["last_error"]["type"] == "mongo_job_queue.errors.MalformedJob"
    assert reason in stored["last_error"]["message"]
    assert bad["_id"] not in ran
    assert queue.running
