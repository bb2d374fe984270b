"""Task handles: a handler and the enqueue of its job type in one typed object, so a type string is written once.

``send_email = queue.task("send_email", max_retries=5)(fn)`` registers ``fn``
as :meth:`~mongo_job_queue.PersistentJobQueue.register_handler` does and
returns a :class:`Task`. ``send_email.enqueue({...})`` then names the job
type itself: a misspelt handle is a ``NameError`` (or a type checker's
error), not a job that no worker will ever claim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Optional, Protocol, TypeVar

from .model import BaseJob

__all__ = ["Task"]

J = TypeVar("J", bound=BaseJob)
R = TypeVar("R")


class _Enqueues(Protocol[J]):
    """What a task needs of its queue (a :class:`~mongo_job_queue.PersistentJobQueue`)."""

    def enqueue(self, job_type: str, data: Optional[Mapping[str, Any]] = None, **options: Any) -> J: ...

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[J]: ...


class Task(Generic[J, R]):
    """A registered handler of ``job_type``, and the enqueue of that type; calling it runs the function directly.

    ``J`` is the queue's job model, ``R`` what the function returns. Built by
    :meth:`~mongo_job_queue.PersistentJobQueue.task`.
    """

    def __init__(self, job_queue: _Enqueues[J], job_type: str, fn: Callable[[J], R]) -> None:
        self.job_queue = job_queue
        self.job_type = job_type
        self.fn = fn
        functools.update_wrapper(self, fn)

    @classmethod
    def decorator(
        cls, job_queue: _Enqueues[J], job_type: str, register: Callable[[Callable[[J], R]], object]
    ) -> Callable[[Callable[[J], R]], Task[J, R]]:
        """``queue.task(job_type, **options)``: ``register`` registers the function, then it is wrapped in a task."""

        def decorate(fn: Callable[[J], R]) -> Task[J, R]:
            register(fn)
            return cls(job_queue, job_type, fn)

        return decorate

    def __call__(self, job: J) -> R:
        """Run the function in this thread, as a test or another handler would: no queue, no retry, no time limit."""
        return self.fn(job)

    def enqueue(self, data: Optional[Mapping[str, Any]] = None, **options: Any) -> J:
        """Enqueue one job of this type; ``options`` are :meth:`~mongo_job_queue.PersistentJobQueue.enqueue`'s."""
        return self.job_queue.enqueue(self.job_type, data, **options)

    def enqueue_many(self, payloads: Iterable[Optional[Mapping[str, Any]]], **options: Any) -> list[J]:
        """One job of this type per payload (its ``data``), all with the same ``options``, in one bulk write.

        As :meth:`~mongo_job_queue.PersistentJobQueue.enqueue_many` (whose
        per-job keys ``options`` takes): every job is validated first, and if
        one is invalid nothing is written. For options that differ per job,
        use the queue's ``enqueue_many``.
        """
        return self.job_queue.enqueue_many([{**options, "job_type": self.job_type, "data": data} for data in payloads])

    def __repr__(self) -> str:
        return f"<Task {self.job_type!r} {getattr(self.fn, '__qualname__', self.fn)!r}>"
