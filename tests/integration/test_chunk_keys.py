"""A chunk's ``key`` partition holds one value only, whatever the field and whatever values are stored in it."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from bson.regex import Regex
from helpers import wait_until

pytestmark = pytest.mark.integration


def _run(queue: Any, raw_db: Any, key: str, total: int) -> list[list[Any]]:
    """Run every job through a batch handler partitioned by ``key``; the chunks' key values."""
    chunks: list[list[Any]] = []
    lock = threading.Lock()

    def handle(jobs: list[Any]) -> None:
        with lock:
            chunks.append([getattr(j, key) for j in jobs])

    queue.register_batch_handler("PART", handle, max_size=50, max_wait_ms=300, key=key)
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == total, timeout=30)
    return chunks


def test_key_queue_keeps_each_queue_in_chunks_of_its_own(make_queue, raw_db) -> None:
    queue = make_queue(queues=["a", "b"])
    queue.enqueue_many([{"job_type": "PART", "queue": "ab"[i % 2]} for i in range(6)])
    chunks = _run(queue, raw_db, "queue", 6)
    assert all(len(set(c)) == 1 for c in chunks), chunks
    assert sorted(q for c in chunks for q in c) == ["a"] * 3 + ["b"] * 3


def test_an_operator_document_or_a_regex_key_value_is_a_value_not_a_query(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.enqueue_many([{"job_type": "PART", "partition": p} for p in ("org-a", "org-b", "other")])
    template = raw_db.jobs.find_one({"partition": "org-a"}, {"_id": 0})
    # The most urgent jobs hold values (stored by hand: enqueue refuses '$' keys) that, put in a filter as
    # they are, would match the other jobs: an operator document and a regex.
    raw_db.jobs.insert_one({**template, "partition": {"$ne": "zzz"}, "priority": 20})
    raw_db.jobs.insert_one({**template, "partition": Regex("^org"), "priority": 10})
    chunks = _run(queue, raw_db, "partition", 5)
    values = [sorted(repr(v) for v in c) for c in chunks]
    assert all(len(set(c)) == 1 for c in values), values
    assert sorted(len(c) for c in chunks) == [1] * 5, values
    assert any(isinstance(c[0], (re.Pattern, Regex)) for c in chunks), values


def test_an_array_key_value_never_joins_a_scalar_partition_and_runs_alone(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.enqueue("PART", partition="x", priority=20)  # the head: scalar "x"
    queue.enqueue("PART", partition=["x", "y"], priority=10)  # equality on "x" would match this array
    queue.enqueue("PART", partition=["x", "y"])  # the same array: still alone
    queue.enqueue("PART", partition="x")
    queue.enqueue("PART")  # no value: its own partition
    chunks = _run(queue, raw_db, "partition", 5)
    assert all(len({repr(v) for v in c}) == 1 for c in chunks), chunks
    assert sorted(map(repr, chunks)) == sorted(map(repr, [["x", "x"], [["x", "y"]], [["x", "y"]], [None]])), chunks
