"""The lifecycle seam: no-op hooks that metrics, tracing and apps plug into.

Subclass :class:`Middleware`, override the hooks you need and pass instances
to ``create_job_queue(middleware=[...])`` or
:meth:`~mongo_job_queue.PersistentJobQueue.add_middleware`. The core
queue never imports Prometheus or OpenTelemetry; ``contrib`` modules are
middleware like any other. A hook that raises is logged and ignored: an
audit or metrics failure must not lose or block a job. That holds for any
exception, ``SystemExit`` and ``KeyboardInterrupt`` from the hook included
(a hook cannot end a worker thread or strand the jobs it holds), with one
exception: a ``KeyboardInterrupt`` in the main thread propagates, since it
may be the user's Ctrl-C arriving while the hook ran (``run_once``, an
enqueue); the queue then hands back any job it claimed.

Hooks receive raw job documents (``dict``) where the queue has no model
instance at hand (claim, retry, rescue), and the app's job instance where it
does (around the handler). ``before_enqueue`` may add fields to the document
it receives, e.g. a trace context; they are validated and stored with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Optional

from .model import job_log_extra

__all__ = ["Middleware", "MiddlewareChain", "Outcome"]

log = logging.getLogger(__name__)

#: What became of one run of a handler, as ``after_process`` reports it: the outcome recorded, or
#: "error" when recording it raised (the database stayed unreachable).
Outcome = Literal["completed", "retry", "failed", "cancelled", "lease_lost", "error"]


class Middleware:
    """Base class with a no-op method per lifecycle point."""

    def before_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        """A job document is about to be inserted (mutable: add fields here)."""

    def after_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        """A job document was inserted."""

    def on_enqueue_aborted(self, queue: Any, doc: dict[str, Any], *, exc: Optional[BaseException]) -> None:
        """A document announced by before_enqueue was not inserted.

        ``exc`` is the error (invalid after the hooks, or the insert failed),
        or None when a job with the same ``unique_key`` was already queued
        (``on_enqueue_duplicate`` came first and named it).
        """

    def on_enqueue_duplicate(self, queue: Any, doc: dict[str, Any], *, existing: dict[str, Any]) -> None:
        """A unique enqueue found its job already stored: ``existing`` is returned, ``doc`` is not inserted.

        ``existing`` is the stored job holding ``doc``'s ``unique_key`` (or
        its schedule's fire time). ``on_enqueue_aborted`` follows, with ``exc=None``.
        """

    def after_claim(self, queue: Any, doc: dict[str, Any]) -> None:
        """This worker leased a job; ``doc`` is its claimed state."""

    def before_process(self, queue: Any, job: Any) -> None:
        """The handler is about to run (same thread as the handler)."""

    def after_process(
        self, queue: Any, job: Any, *, outcome: Outcome, exc: Optional[BaseException], duration_s: float
    ) -> None:
        """The handler returned or raised and the outcome was decided (same thread as the handler).

        Always called after before_process. ``outcome`` is "completed",
        "retry", "failed", "cancelled", "lease_lost", or "error" when the
        outcome could not be recorded (the database stayed unreachable). With
        ``batch_acks`` "completed" is the handler's result; if the buffered
        write then finds the lease gone, on_lease_lost follows.
        """

    def before_chunk(self, queue: Any, jobs: list[Any]) -> None:
        """A batch handler is about to run on ``jobs`` (app instances), before each ``before_process`` (same thread)."""

    def after_chunk(
        self,
        queue: Any,
        jobs: list[Any],
        *,
        outcomes: Sequence[Outcome],
        exc: Optional[BaseException],
        duration_s: float,
    ) -> None:
        """A batch handler's chunk ended, after each job's ``after_process``: ``outcomes[i]`` is ``jobs[i]``'s.

        ``exc`` is what the handler raised (every job then retried or failed
        under its own policy), or None.
        """

    def on_retry_scheduled(self, queue: Any, doc: dict[str, Any], *, delay_ms: int, exc: BaseException) -> None:
        """A failed attempt was written back as ``pending``, due in ``delay_ms``."""

    def on_failed(self, queue: Any, doc: dict[str, Any], *, exc: BaseException) -> None:
        """A job ended ``failed`` for good."""

    def on_lease_lost(self, queue: Any, doc: dict[str, Any]) -> None:
        """This worker found it no longer holds a job's lease; its outcome will not be recorded."""

    def on_time_limit_exceeded(self, queue: Any, doc: dict[str, Any], *, limit_ms: int) -> None:
        """A handler ran past its time limit: JobTimeLimitExceeded was raised in its thread (the watchdog's thread)."""

    def on_abandoned(self, queue: Any, doc: dict[str, Any], *, limit_ms: int) -> None:
        """A handler still ran past its time limit and grace: its attempt is recorded and its thread replaced."""

    def on_orphan_recovered(self, queue: Any, doc: dict[str, Any], *, failed: bool) -> None:
        """A job whose lease expired was returned to the queue (or failed, attempts spent)."""

    def on_cancelled(self, queue: Any, job_id: Any) -> None:
        """A job ended ``cancelled``: a pending one by request, or a running one that honoured a request."""

    def on_worker_start(self, queue: Any) -> None:
        """The worker pool of this process started."""

    def on_worker_stop(self, queue: Any) -> None:
        """The worker pool of this process stopped."""


def _job_extra(args: tuple[Any, ...]) -> dict[str, Any]:
    # The first argument of most hooks is the job: a raw document or the app's instance.
    subject = args[0] if args else None
    if isinstance(subject, Mapping):
        return job_log_extra(subject)
    to_mongo = getattr(subject, "to_mongo", None)
    return job_log_extra(to_mongo()) if callable(to_mongo) else {}


class MiddlewareChain:
    """Calls a hook on every middleware in order, logging and swallowing their errors."""

    def __init__(self, queue: Any, middleware: Optional[Iterable[Middleware]] = None) -> None:
        self.queue = queue
        self._items: list[Middleware] = []
        for item in middleware or ():
            self.add(item)

    def add(self, item: Middleware) -> None:
        if not isinstance(item, Middleware):
            raise TypeError(f"middleware must be a mongo_job_queue.Middleware, got {type(item).__name__}")
        self._items.append(item)

    @property
    def items(self) -> Sequence[Middleware]:
        return tuple(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def emit(self, hook: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook`` on every middleware; whatever one raises is logged, never passed on (see the module doc)."""
        for item in self._items:
            try:
                getattr(item, hook)(self.queue, *args, **kwargs)
            except BaseException as exc:  # a hook must never lose or block a job, nor end a worker thread
                if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                    raise  # perhaps the user's Ctrl-C, not the hook's doing
                log.exception("middleware %s.%s failed", type(item).__name__, hook, extra=_job_extra(args))
