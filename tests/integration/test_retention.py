"""Retention: per-status partial TTL indexes, created at start and changed in place."""

from __future__ import annotations

import pytest

from mongo_job_queue import ConfigError
from mongo_job_queue.store import retention_index_name

pytestmark = pytest.mark.integration

DAY_S = 24 * 3600


def ttl_indexes(raw_db) -> dict[str, dict]:
    return {ix["name"]: ix for ix in raw_db["jobs"].list_indexes() if "expireAfterSeconds" in ix}


def test_default_retention_creates_one_partial_ttl_index_per_finished_status(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.ensure_indexes()
    indexes = ttl_indexes(raw_db)
    assert set(indexes) == {"mjq_ttl_completed", "mjq_ttl_failed", "mjq_ttl_cancelled"}
    for status, days in (("completed", 7), ("failed", 30), ("cancelled", 30)):
        index = indexes[retention_index_name(status)]
        assert dict(index["key"]) == {"finished_at": 1}
        assert index["expireAfterSeconds"] == days * DAY_S
        # Unfinished jobs never match the filter, so the TTL monitor never removes them.
        assert dict(index["partialFilterExpression"]) == {"status": status}


def test_changed_retention_is_applied_at_the_next_start(make_queue, raw_db) -> None:
    make_queue().ensure_indexes()
    make_queue(retention_completed_ms=3_600_000, retention_failed_ms=1_500).ensure_indexes()
    indexes = ttl_indexes(raw_db)
    assert indexes["mjq_ttl_completed"]["expireAfterSeconds"] == 3600
    assert indexes["mjq_ttl_failed"]["expireAfterSeconds"] == 2  # rounded up: never removed early
    assert indexes["mjq_ttl_cancelled"]["expireAfterSeconds"] == 30 * DAY_S


def test_retention_none_keeps_jobs_forever_and_drops_the_index(make_queue, raw_db) -> None:
    make_queue().ensure_indexes()
    queue = make_queue(retention_completed_ms=None, retention_cancelled_ms=None)
    queue.ensure_indexes()
    assert set(ttl_indexes(raw_db)) == {"mjq_ttl_failed"}
    queue.ensure_indexes()  # idempotent
    assert set(ttl_indexes(raw_db)) == {"mjq_ttl_failed"}
    make_queue(retention_completed_ms=60_000).ensure_indexes()
    assert ttl_indexes(raw_db)["mjq_ttl_completed"]["expireAfterSeconds"] == 60


def test_an_index_edited_by_hand_is_recreated(make_queue, raw_db) -> None:
    make_queue().ensure_indexes()
    raw_db["jobs"].drop_index("mjq_ttl_completed")
    raw_db["jobs"].create_index(
        [("finished_at", 1)],
        name="mjq_ttl_completed",
        expireAfterSeconds=5,
        partialFilterExpression={"status": "failed"},
    )
    make_queue().ensure_indexes()
    index = ttl_indexes(raw_db)["mjq_ttl_completed"]
    assert dict(index["partialFilterExpression"]) == {"status": "completed"}
    assert index["expireAfterSeconds"] == 7 * DAY_S


def test_start_polling_ensures_retention(make_queue, raw_db) -> None:
    queue = make_queue(retention_failed_ms=86_400_000)
    queue.register_handler("T", lambda job: None)
    queue.start_polling()
    assert ttl_indexes(raw_db)["mjq_ttl_failed"]["expireAfterSeconds"] == DAY_S


@pytest.mark.parametrize("bad", [0, 999, -1, "7d", 1.5, True])
def test_bad_retention_is_rejected(make_queue, bad) -> None:
    with pytest.raises(ConfigError, match="retention_completed_ms"):
        make_queue(retention_completed_ms=bad)
