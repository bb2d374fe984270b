"""What the mixins of :class:`~mongo_job_queue.store.JobStore` rely on, declared once for the type checker.

JobStore provides all of it at runtime; the mixins (:mod:`.store_admin`,
:mod:`.store_control`) split its queries by responsibility, not its state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from .config import QueueConfig
    from .model import BaseJob

__all__ = [
    "INDEX_BUILD_MS",
    "KEPT_MARKS",
    "MAINTENANCE_MAX_TIME_MS",
    "StoreBase",
    "as_stored",
    "new_mark",
    "pushed_mark",
]

#: The server-side bound of each maintenance read (sweep, hygiene): a slow one gives up, the next round tries again.
MAINTENANCE_MAX_TIME_MS = 5_000
#: Extra time bound of an index build on a large existing collection, on top of ``db_timeout_ms``.
INDEX_BUILD_MS = 300_000

T = TypeVar("T")


def as_stored(value: datetime) -> datetime:
    """``value`` as the server stores and returns it: BSON dates hold whole milliseconds.

    A retried write that checks "did my earlier try apply?" by a time it wrote
    compares with this, not with the microseconds it computed.
    """
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


#: How many administrative marks a job keeps (``admin_marks``, see :class:`~mongo_job_queue.BaseJob`).
KEPT_MARKS = 8


def new_mark() -> str:
    """A marker unique to one administrative call, written by each of its tries.

    A retried call recognises its own earlier write by it: not by a time (a
    frozen clock gives two calls the same one) nor by a field a worker
    changes meanwhile (a claim rewrites ``run_at``, a cancel ends the job).
    """
    return uuid.uuid4().hex


def pushed_mark(mark: Any) -> dict[str, Any]:
    """An aggregation expression: ``admin_marks`` with ``mark`` appended, the last :data:`KEPT_MARKS` kept."""
    marks = {"$concatArrays": [{"$ifNull": ["$admin_marks", []]}, [mark]]}
    return {"$slice": [marks, -KEPT_MARKS]}


class StoreBase:
    """Declarations shared by the store's mixins; no behaviour."""

    if TYPE_CHECKING:
        model: type[BaseJob]
        config: QueueConfig
        log: logging.Logger

        @property
        def collection(self) -> Collection[dict[str, Any]]: ...

        def now(self) -> datetime: ...

        def bounded(self, extra_ms: int = 0) -> contextlib.AbstractContextManager[None]: ...

        def _retry(
            self, fn: Callable[[], T], op: str, abort: threading.Event | None = None, *, extra_ms: int = 0
        ) -> T: ...
