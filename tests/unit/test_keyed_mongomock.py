"""Keyed mode on mongomock, which app test suites use: no sessions, so the steps run in order (single-threaded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ALIAS
from mongoengine import StringField

from mongo_job_queue import BaseJob, InvalidJobError, PersistentJobQueue
from mongo_job_queue.store.indexes import forget_prepared
from mongo_job_queue.workflows import chain

COLLECTION = "unit_keyed_jobs"


class KeyedRefJob(BaseJob):
    ref = StringField(unique=True, sparse=True)
    meta = {"collection": COLLECTION, "db_alias": ALIAS, "shard_key": ("queue", "id")}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    def drop() -> None:
        KeyedRefJob.drop_collection()
        forget_prepared(PlainRefJob)  # the same collection, dropped through the other model
        for suffix in ("_keys", "_control"):
            KeyedRefJob._get_db().drop_collection(f"{COLLECTION}{suffix}")

    drop()
    yield
    drop()


def _keys() -> list[dict[str, Any]]:
    return list(KeyedRefJob._get_db()[f"{COLLECTION}_keys"].find())


def test_a_unique_job_of_a_keyed_model_on_mongomock(make_queue: Callable[..., PersistentJobQueue[Any]]) -> None:
    queue = make_queue(KeyedRefJob)
    first = queue.enqueue("T", {}, unique_key="k")
    assert queue.enqueue("T", {}, unique_key="k").id == first.id
    assert [d["job"] for d in _keys()] == [first.id]
    queue.enqueue("T", {}, ref="r1")
    with pytest.raises(InvalidJobError, match="unique index"):
        queue.enqueue("T", {}, unique_key="other", ref="r1")
    assert [d["_id"] for d in _keys()] == [{"u": "k"}]  # the refused enqueue's key document was taken out
    assert queue.enqueue("T", {}, unique_key="other").unique_key == "other"
    with pytest.raises(InvalidJobError, match="needs transactions"):
        queue.enqueue_graph(chain(queue.job("A", {}, unique_key="g")))


class PlainRefJob(BaseJob):
    """The same collection before the shard key was declared."""

    ref = StringField(unique=True, sparse=True)
    meta = {"collection": COLLECTION, "db_alias": ALIAS}


def test_the_backfill_on_mongomock(make_queue: Callable[..., PersistentJobQueue[Any]]) -> None:
    held = make_queue(PlainRefJob).enqueue("T", {}, unique_key="k")
    assert _keys() == []
    queue = make_queue(KeyedRefJob)
    queue.ensure_indexes()  # the backfill, again: what is there stays
    assert queue.enqueue("T", {}, unique_key="k").id == held.id
    assert [d["job"] for d in _keys()] == [held.id]
