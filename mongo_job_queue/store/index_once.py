"""Indexes a component creates itself (beside the model's): once per collection and process, again if dropped.

They are built as the model's are (:meth:`~mongo_job_queue.store.indexes.Indexes.ensure`):
through the store's retry with the index build's extra bound
(:data:`~mongo_job_queue.store.handle.INDEX_BUILD_MS`), never inside a
query's own bound, which a build on a large existing collection outlasts.

A hinted query on a missing index fails at once (``BadValue``); that is
taken as "the collection was dropped or the index removed by hand": the
indexes are created again and the query runs once more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from pymongo.errors import OperationFailure

from ..after_fork import renew_in_child
from .handle import BUILD_WAIT_S, INDEX_BUILD_MS, JobStore

__all__ = ["IndexOnce", "missing_index"]

T = TypeVar("T")


def missing_index(exc: BaseException) -> bool:
    """Whether ``exc`` says a hinted index does not exist."""
    return isinstance(exc, OperationFailure) and exc.code == 2 and "hint" in str(exc)


class IndexOnce:
    """Remembers which collections got their indexes in this process.

    A collection is named by the store's model and a ``suffix`` to the jobs
    collection's name (``""`` for the jobs collection itself, ``"_audit"``),
    so that telling whether it is done needs no database call.
    """

    def __init__(self) -> None:
        self._done: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        #: One build at a time per collection: see :meth:`ensure`.
        self._building: dict[tuple[str, str], threading.Lock] = {}
        renew_in_child(self)

    def _after_fork_in_child(self) -> None:
        # A build a parent thread was running at fork() never ends here: its lock would stay held.
        self._lock = threading.Lock()
        self._building = {}

    @staticmethod
    def _key(store: JobStore, suffix: str) -> tuple[str, str]:
        model = store.model
        return (model._get_db().name, f"{model._get_collection_name()}{suffix}")

    def ensure(self, store: JobStore, suffix: str, create: Callable[[], object]) -> None:
        """Run ``create`` once per collection and process, retried, under the index build's bound.

        A second thread that needs the collection meanwhile waits for the
        first one's build instead of starting its own: two builds at once, the
        first one's writes landing between them (a worker's first registry
        write while an ``enqueue`` lists the workers), is what the embedded
        server's known livelock needs, and is a wasted build elsewhere. A
        build that holds the others up past :data:`BUILD_WAIT_S` lets them
        build on their own, as before.
        """
        key = self._key(store, suffix)
        if key in self._done:
            return
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        held = building.acquire(timeout=BUILD_WAIT_S)
        try:
            if key in self._done:  # built by the thread this one waited for
                return
            store.retry(create, f"create_indexes{suffix}", extra_ms=INDEX_BUILD_MS)
            with self._lock:
                self._done.add(key)
        finally:
            if held:
                building.release()

    def hinted(self, store: JobStore, suffix: str, create: Callable[[], object], query: Callable[[], T]) -> T:
        """Run ``query`` (which hints these indexes, under its own bound) once they exist; re-create them if missing."""
        self.ensure(store, suffix, create)
        try:
            return query()
        except OperationFailure as exc:
            if not missing_index(exc):
                raise
            with self._lock:
                self._done.discard(self._key(store, suffix))
            self.ensure(store, suffix, create)
            return query()
