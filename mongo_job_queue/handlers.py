"""The per-type handler registry of one queue.

Handlers belong to the app; the queue only keeps the mapping from job type to
function and retry policy. A worker claims exactly the types registered here,
so a web process that only enqueues never takes jobs it cannot run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Optional, TypeVar

from .after_fork import renew_in_child
from .clock import MAX_DURATION_MS
from .config import MAX_RETRIES
from .errors import HandlerError
from .retry import RetryPolicy, RetryStrategy, StopStrategy, WaitStrategy

__all__ = ["ChunkSpec", "Handler", "HandlerFn", "HandlerRegistry"]

HandlerFn = Callable[[Any], Any]
F = TypeVar("F", bound=HandlerFn)


@dataclass(frozen=True)
class ChunkSpec:
    """How a batch handler's chunks are formed (see :mod:`.chunks`): ``fn(jobs)`` on up to ``max_size`` jobs."""

    fn: Callable[[list[Any]], Any]
    max_size: int
    max_wait_ms: int
    #: The stored field (its database name) whose value every job of one chunk shares; None: any.
    key: Optional[str] = None


@dataclass(frozen=True)
class Handler:
    """A registered handler: the function, its retry policy, retry bound and time limit."""

    job_type: str
    fn: HandlerFn
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_retries: Optional[int] = None
    #: Milliseconds one run may take (0: none); None leaves it to the config's ``default_time_limit_ms``.
    time_limit_ms: Optional[int] = None
    #: Set for a batch handler: its chunks run on a thread of their own, ``fn`` runs a chunk of one.
    chunk: Optional[ChunkSpec] = None


class HandlerRegistry:
    """Thread-safe mapping of job type to :class:`Handler`."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        renew_in_child(self)

    def _after_fork_in_child(self) -> None:
        # A lock held by a parent thread at fork() stays held forever in the child.
        self._lock = threading.Lock()

    def register(
        self,
        job_type: str,
        fn: F,
        *,
        stop: Optional[StopStrategy] = None,
        wait: Optional[WaitStrategy] = None,
        retry: Optional[RetryStrategy] = None,
        max_retries: Optional[int] = None,
        time_limit_ms: Optional[int] = None,
    ) -> F:
        """Register ``fn(job)`` for ``job_type``; return it (see :meth:`.PersistentJobQueue.register_handler`)."""
        self.add(Handler(job_type, fn, RetryPolicy(stop=stop, wait=wait, retry=retry), max_retries, time_limit_ms))
        return fn

    def add(self, handler: Handler) -> None:
        """Check and add a handler: :meth:`register`'s, or a batch handler with its chunk spec (:mod:`.chunks`)."""
        job_type, fn = handler.job_type, handler.fn
        max_retries, time_limit_ms = handler.max_retries, handler.time_limit_ms
        if not isinstance(job_type, str) or not job_type:
            raise HandlerError(f"job type must be a non-empty str, got {job_type!r}")
        if not callable(fn):
            raise HandlerError(f"handler for {job_type!r} must be callable, got {type(fn).__name__} {fn!r}")
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES
        ):
            raise HandlerError(
                f"max_retries for {job_type!r} must be an int from 0 to {MAX_RETRIES}, got {max_retries!r:.80}"
            )
        if time_limit_ms is not None and not _is_duration(time_limit_ms):
            raise HandlerError(
                f"time_limit_ms for {job_type!r} must be an int from 0 (no limit) to {MAX_DURATION_MS}, "
                f"got {time_limit_ms!r:.80}"
            )
        with self._lock:
            existing = self._handlers.get(job_type)
            if existing is not None:
                raise HandlerError(
                    f"a handler for job type {job_type!r} is already registered ({_name(existing.fn)}); "
                    f"refusing to replace it with {_name(fn)}"
                )
            self._handlers[job_type] = handler

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def types(self, *, chunked: Optional[bool] = None) -> list[str]:
        """Registered job types, sorted so claim filters are stable; ``chunked``: only batch handlers' (or others')."""
        with self._lock:
            return sorted(t for t, h in self._handlers.items() if chunked is None or (h.chunk is not None) == chunked)

    def subset(
        self, job_types: Optional[Iterable[str]] = None, *, wrap: Optional[Callable[[HandlerFn], HandlerFn]] = None
    ) -> HandlerRegistry:
        """A new registry with only ``job_types`` (all when None), each function optionally wrapped.

        For a worker dedicated to some types, or one that counts its jobs;
        retry policies, ``max_retries`` and ``time_limit_ms`` are kept.

        Raises:
            HandlerError: a type that has no handler here.
        """
        with self._lock:
            handlers = dict(self._handlers)
        wanted = list(handlers) if job_types is None else list(job_types)
        missing = sorted(set(wanted) - set(handlers))
        if missing:
            known = ", ".join(sorted(handlers)) or "none"
            raise HandlerError(f"no handler registered for job type(s) {', '.join(missing)} (registered: {known})")
        sub = HandlerRegistry()
        for job_type in wanted:
            handler = handlers[job_type]
            sub._handlers[job_type] = replace(handler, fn=wrap(handler.fn)) if wrap else handler
        return sub

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


def _is_duration(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_DURATION_MS


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
