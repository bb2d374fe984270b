"""What the mixins of :class:`~mongo_job_queue.store.JobStore` rely on, declared once for the type checker.

JobStore provides all of it at runtime; the mixins (:mod:`.store_admin`,
:mod:`.store_control`) split its queries by responsibility, not its state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from .config import QueueConfig
    from .model import BaseJob

__all__ = ["INDEX_BUILD_MS", "MAINTENANCE_MAX_TIME_MS", "StoreBase", "as_stored"]

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
