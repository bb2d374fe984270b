"""A collection beside the jobs collection, owned by one component, with the indexes that component needs.

The owners (control, workers, batches, locks) each name their suffix and, if they
need one, how to build their index; :class:`SiblingCollection` hands them
the collection (:meth:`~mongo_job_queue.store.handle.JobStore.sibling`) and
builds the index once per process (:class:`~.index_once.IndexOnce`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from pymongo.collection import Collection

from .handle import JobStore
from .index_once import IndexOnce

__all__ = ["SiblingCollection"]

T = TypeVar("T")
#: Builds the owner's index on the collection it is given.
IndexBuilder = Callable[[Collection[dict[str, Any]]], object]
#: Options the owner sets on the collection, such as a write concern.
CollectionOptions = Callable[[Collection[dict[str, Any]]], Collection[dict[str, Any]]]

#: Keyed by database and collection name, so one set serves every owner.
_indexes = IndexOnce()


@dataclass(eq=False)
class SiblingCollection:
    """``<jobs collection>_<suffix>`` and its index, built before the first use that needs it."""

    store: JobStore
    suffix: str
    create_index: Optional[IndexBuilder] = None
    #: The owner's options on the collection (the locks' write concern), applied to every use of it.
    options: Optional[CollectionOptions] = field(default=None, kw_only=True)

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """The collection, with no index built (reads that need none, writes to existing documents)."""
        collection = self.store.sibling(self.suffix)
        return collection if self.options is None else self.options(collection)

    def _create(self) -> None:
        if self.create_index is not None:
            self.create_index(self.collection)

    def ready(self) -> Collection[dict[str, Any]]:
        """The collection, its index created first (once per process)."""
        _indexes.ensure(self.store, f"_{self.suffix}", self._create)
        return self.collection

    def hinted(self, query: Callable[[], T]) -> T:
        """Run ``query``, which hints the index; the index is created again if it went missing."""
        return _indexes.hinted(self.store, f"_{self.suffix}", self._create, query)
