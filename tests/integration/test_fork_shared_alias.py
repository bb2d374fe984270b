"""fork() with several queues on one connection alias, and with the queue's locks held by a parent thread."""

from __future__ import annotations

import os
import threading
from typing import Any

import mongoengine.connection
import pytest
from helpers import run_forked
from mongoengine import StringField

from integration.models import ALIAS, IntegrationJob
from mongo_job_queue import BaseJob, create_job_queue
from mongo_job_queue.store import fork as fork_module

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
]


class SecondJob(BaseJob):
    """Another app model on the same connection alias."""

    note = StringField()
    meta = {"collection": "jobs_second", "db_alias": ALIAS}


@pytest.mark.parametrize("hooks", [True, False], ids=["at-fork-hooks", "fork-from-c-without-hooks"])
def test_second_queue_on_an_alias_keeps_the_client_the_child_created(job_model, hooks: bool) -> None:
    SecondJob.drop_collection()
    first = create_job_queue(job_model=job_model)
    same_model = create_job_queue(job_model=job_model)
    other_model = create_job_queue(job_model=SecondJob)
    for queue in (first, same_model, other_model):
        queue.enqueue("PARENT", {})  # each store now holds the parent's client
    parent_client = mongoengine.connection.get_connection(ALIAS)

    def body() -> None:
        if not hooks:  # as after a fork by C code, which runs no os.register_at_fork hook
            fork_module._hooked_pid = None
        first.enqueue("CHILD", {})
        client = mongoengine.connection.get_connection(ALIAS)
        assert client is not parent_client, "the child must not use the parent's client"
        same_model.enqueue("CHILD", {})
        other_model.enqueue("CHILD", {})
        assert mongoengine.connection.get_connection(ALIAS) is client, "a second store dropped the child's client"
        assert IntegrationJob._get_collection().database.client is client
        assert SecondJob._get_collection().database.client is client
        assert IntegrationJob.objects(type="CHILD").count() == 2
        assert SecondJob.objects(type="CHILD").count() == 1

    assert run_forked(body) == "ok"
    assert mongoengine.connection.get_connection(ALIAS) is parent_client
    assert job_model.objects(type="CHILD").count() == 2


def test_a_queue_created_in_the_child_does_not_use_the_parents_client(job_model) -> None:
    # An app factory run after fork(), with mongoengine.connect() done in the parent at import.
    create_job_queue(job_model=job_model).enqueue("PARENT", {})
    parent_client = mongoengine.connection.get_connection(ALIAS)

    def body() -> None:
        queue = create_job_queue(job_model=job_model)
        queue.enqueue("CHILD", {})
        client = mongoengine.connection.get_connection(ALIAS)
        assert client is not parent_client, "a queue created in the child used the parent's client"
        assert queue.store.collection.database.client is client
        create_job_queue(job_model=job_model).enqueue("CHILD", {})
        assert mongoengine.connection.get_connection(ALIAS) is client

    assert run_forked(body) == "ok"
    assert job_model.objects(type="CHILD").count() == 2


def test_locks_held_by_a_parent_thread_at_fork_are_fresh_in_the_child(job_model) -> None:
    queue = create_job_queue(job_model=job_model)
    queue.enqueue("PARENT", {})
    real_hello = queue.store._hello
    # A parent thread is in the middle of the first clock measurement and of a registration.
    queue.store._synced = False
    gate, entered = threading.Event(), threading.Event()

    def gated_hello() -> Any:
        entered.set()
        gate.wait(30)
        return real_hello()

    queue.store._hello = gated_hello
    measuring = threading.Thread(target=queue.store.now, daemon=True)
    measuring.start()
    assert entered.wait(10)
    queue.registry._lock.acquire()

    def body() -> None:
        queue.store._hello = real_hello
        queue.register_handler("CHILD", lambda job: None)
        job = queue.enqueue("CHILD", {})
        assert queue.run_once() is not None
        assert job_model.objects.get(id=job.id).status == "completed"

    try:
        assert run_forked(body) == "ok"
    finally:
        queue.registry._lock.release()
        gate.set()
        measuring.join(10)


def test_a_sibling_index_build_a_parent_thread_was_running_at_fork_holds_up_no_child(job_model) -> None:
    from mongo_job_queue.store import siblings

    queue = create_job_queue(job_model=job_model)
    docs = queue.store.workers
    key = siblings._indexes._key(queue.store, "_workers")
    siblings._indexes._done.discard(key)  # each test's database is new; the process remembers by name
    real = docs._workers.create_index
    assert real is not None
    gate, building = threading.Event(), threading.Event()

    def held(collection: Any) -> None:
        if threading.current_thread().name == "parent-build":
            building.set()
            assert gate.wait(60), "gate never opened"
        real(collection)

    docs._workers.create_index = held
    parent = threading.Thread(target=docs._workers.ready, name="parent-build", daemon=True)
    parent.start()
    try:
        assert building.wait(10)

        def body() -> None:
            assert docs.list() == []  # builds the index itself: the parent's build does not exist here

        assert run_forked(body, timeout=30) == "ok"
    finally:
        gate.set()
        parent.join(30)
