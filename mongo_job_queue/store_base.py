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

__all__ = ["StoreBase"]

T = TypeVar("T")


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
