"""Indexes a component creates itself (beside the model's): once per collection and process, again if dropped.

A hinted query on a missing index fails at once (``BadValue``); that is
taken as "the collection was dropped or the index removed by hand": the
indexes are created again and the query runs once more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pymongo.errors import OperationFailure

__all__ = ["IndexOnce", "missing_index"]

T = TypeVar("T")


def missing_index(exc: BaseException) -> bool:
    """Whether ``exc`` says a hinted index does not exist."""
    return isinstance(exc, OperationFailure) and exc.code == 2 and "hint" in str(exc)


class IndexOnce:
    """Remembers which collections got their indexes in this process."""

    def __init__(self) -> None:
        self._done: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def ensure(self, collection: Any, create: Callable[[], object]) -> None:
        key = (collection.database.name, collection.name)
        if key in self._done:
            return
        create()
        with self._lock:
            self._done.add(key)

    def hinted(self, collection: Any, create: Callable[[], object], query: Callable[[], T]) -> T:
        """Run ``query`` (which hints these indexes) once they exist; re-create them if it finds one missing."""
        self.ensure(collection, create)
        try:
            return query()
        except OperationFailure as exc:
            if not missing_index(exc):
                raise
            with self._lock:
                self._done.discard((collection.database.name, collection.name))
            self.ensure(collection, create)
            return query()
