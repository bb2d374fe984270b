"""A change stream whose every round trip to the server is time-bounded.

A change-stream read is a long poll: the server holds each ``getMore`` for up
to ``maxAwaitTimeMS`` before it answers "nothing new". With no bound on the
client side, a read on a connection that a network partition silently cut
never returns, and the thread that reads it (the wake-up thread, or a
stopping thread closing it) hangs for good. Each read here may take the
long poll's wait plus ``db_timeout_ms``; opening and closing take
``db_timeout_ms`` (see :meth:`~mongo_job_queue.store.JobStore.bounded`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, Optional

__all__ = ["BoundedChangeStream"]

Bound = Callable[[int], contextlib.AbstractContextManager[None]]


class BoundedChangeStream:
    """Wraps a pymongo ``ChangeStream``: ``try_next`` and ``close`` run under a time bound."""

    def __init__(self, stream: Any, bound: Bound, max_await_ms: int) -> None:
        self._stream = stream
        self._bound = bound
        self._max_await_ms = max_await_ms

    @property
    def alive(self) -> bool:
        return bool(self._stream.alive)

    @property
    def resume_token(self) -> Any:
        return self._stream.resume_token

    def try_next(self) -> Any:
        """One ``getMore`` at most: the next change, or None; a timeout raises (the stream stays usable)."""
        with self._bound(self._max_await_ms):
            return self._stream.try_next()

    def close(self) -> None:
        with self._bound(0):
            self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __enter__(self) -> BoundedChangeStream:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()
