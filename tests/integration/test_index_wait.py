"""A thread waiting for another thread's first index build of a model waits with a bound, then says why."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mongo_job_queue import IndexSetupError
from mongo_job_queue.store import indexes

pytestmark = pytest.mark.integration


def test_a_wait_for_another_threads_index_build_is_bounded(make_queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = make_queue()
    gate, building = threading.Event(), threading.Event()
    real_create = indexes._create_indexes

    def held_create(model: Any) -> None:
        if threading.current_thread().name == "builder":  # a build that takes long (a large collection, a slow server)
            building.set()
            assert gate.wait(30), "gate never opened"
        real_create(model)

    monkeypatch.setattr(indexes, "_create_indexes", held_create)
    monkeypatch.setattr(indexes, "BUILD_WAIT_S", 0.5)
    builder = threading.Thread(target=lambda: queue.store.collection, name="builder", daemon=True)
    outcome: list[BaseException | str] = []

    def waiter() -> None:
        try:
            queue.store.collection  # noqa: B018 - the first use of the model waits for the build
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(exc)

    builder.start()
    try:
        assert building.wait(10)
        other = threading.Thread(target=waiter, daemon=True)
        other.start()
        other.join(5)
        assert outcome, "the waiter was still waiting for the other thread's build after 5 s"
        error = outcome[0]
        assert isinstance(error, IndexSetupError), error
        assert "another thread" in str(error) and queue.job_model.__name__ in str(error)
    finally:
        gate.set()
        builder.join(30)
    assert queue.store.indexes.prepared  # the builder's build completed: the next use is a plain query
    queue.enqueue("T", {})


def test_a_second_thread_waits_for_the_first_threads_sibling_index_build(make_queue: Any) -> None:
    """A worker's first registry write and an ``enqueue`` listing the workers never build the index side by side.

    Both need ``<jobs>_workers``' index; two builds at once, with the first
    thread's insert landing between them, is what livelocks the embedded
    server (a tz rerun hung so in ``enqueue``: KnownTypes -> workers.list).
    """
    from mongo_job_queue.store import siblings

    queue = make_queue()
    gate, building = threading.Event(), threading.Event()
    builds: list[str] = []
    docs = queue.store.workers
    real = docs._workers.create_index
    assert real is not None

    def held(collection: Any) -> None:
        builds.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            building.set()
            assert gate.wait(30), "gate never opened"
        real(collection)

    docs._workers.create_index = held
    # Each test's database is new, but the process remembers the collections it built (by name).
    siblings._indexes._done.discard(siblings._indexes._key(queue.store, "_workers"))
    listed: list[Any] = []
    first = threading.Thread(target=lambda: docs._workers.ready(), name="first", daemon=True)
    second = threading.Thread(target=lambda: listed.append(docs.list()), name="second", daemon=True)
    first.start()
    try:
        assert building.wait(10)
        second.start()
        second.join(1.0)  # a bound on a wait that must not end: the second thread waits for the first's build
        assert builds == ["first"], builds
        assert second.is_alive() and not listed
    finally:
        gate.set()
        first.join(30)
        if second.ident is not None:
            second.join(30)
    assert builds == ["first"], builds  # the second thread used the first one's build
    assert listed == [[]]
