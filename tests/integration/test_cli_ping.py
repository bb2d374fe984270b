"""The CLI's database check before a command: one ping under its bound, no index build."""

from __future__ import annotations

import pytest

from mongo_job_queue.cli import check_database

pytestmark = pytest.mark.integration


def test_the_ping_builds_no_index(make_queue, raw_db) -> None:
    # An index build on a large collection outlasts the ping's 5 s; the command's own first call builds them,
    # under the index build's bound (store.indexes).
    queue = make_queue()
    check_database(queue, 5.0)
    assert not queue.store.indexes.prepared
    indexes = raw_db.jobs.index_information() if "jobs" in raw_db.list_collection_names() else {}
    assert set(indexes) <= {"_id_"}, indexes
