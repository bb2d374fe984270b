"""The write-concern guard: a clear warning when claims could be rolled back."""

from __future__ import annotations

import mongoengine
import pytest

from mongo_job_queue import BaseJob, create_job_queue

pytestmark = pytest.mark.integration

WEAK_ALIAS = "mjq_weak_write_concern"


class WeakJob(BaseJob):
    meta = {"collection": "weak_jobs", "db_alias": WEAK_ALIAS}


@pytest.fixture
def weak_alias(mongodb_uri, db_name):
    mongoengine.connect(db=db_name, host=mongodb_uri, alias=WEAK_ALIAS, w=1, uuidRepresentation="standard")
    yield
    mongoengine.disconnect(alias=WEAK_ALIAS)


def test_w1_on_a_replica_set_is_reported_at_start(weak_alias, raw_db, caplog) -> None:
    if not raw_db.client.admin.command("hello").get("setName"):
        pytest.skip("MONGODB_URI points at a standalone server: no rollback, no warning")
    queue = create_job_queue(job_model=WeakJob)
    queue.register_handler("T", lambda job: None)
    with caplog.at_level("WARNING"):
        queue.start_polling()
        queue.stop(timeout=5)
    assert "unsafe write concern" in caplog.text
    assert "w=1" in caplog.text and "w='majority'" in caplog.text


def test_default_or_majority_is_not_reported(make_queue, caplog) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    with caplog.at_level("WARNING"):
        queue.start_polling()
    assert "unsafe write concern" not in caplog.text
