"""Helpers for an app's own tests: eager mode, draining, and enqueue assertions.

An app test usually wants one of two things, as with Oban's inline and manual
modes or Celery's eager mode:

* the job's effect right away: :func:`eager` runs each job synchronously
  inside ``enqueue``, in the calling thread;
* to check *that* a request enqueued a job, and with what:
  :func:`assert_enqueued`, then run it on purpose with :func:`drain`.

Both work on mongomock or a real server, with no worker threads::

    @pytest.fixture
    def jobs_eager(queue):
        with eager(queue):
            yield queue

    def test_signup_sends_a_welcome_email(client, queue):
        client.post("/signup", json={"email": "ada@example.com"})
        assert_enqueued(queue, "send_email", data={"to": "ada@example.com"})
        assert drain(queue) == 1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Optional, TypeVar

from .errors import EagerJobFailed
from .loading import load_job
from .model import BaseJob
from .queue import PersistentJobQueue

__all__ = ["EagerJobFailed", "assert_enqueued", "assert_not_enqueued", "drain", "eager", "enqueued_jobs"]

J = TypeVar("J", bound=BaseJob)

_QUEUE_FIELDS = {"job_type": "type", "queue": "queue", "status": "status", "priority": "priority"}


@contextlib.contextmanager
def eager(queue: PersistentJobQueue[J], *, propagate: bool = True) -> Iterator[PersistentJobQueue[J]]:
    """Run every job of a registered type inside ``enqueue``, until the block ends.

    The job is stored first and then claimed and run in the calling thread,
    even if it was delayed: ``enqueue`` returns it in its new state. A
    failure follows the retry policy once (no retry loop): the job is then
    ``pending`` with a future ``run_at``, or ``failed``.

    Args:
        queue: The app's queue.
        propagate: Raise :class:`~mongo_job_queue.errors.EagerJobFailed`
            (an ``AssertionError``) from ``enqueue`` when the job did not
            complete, so a broken handler fails the test that caused it.
    """
    previous = (queue.eager, queue.eager_propagate)
    queue.eager, queue.eager_propagate = True, propagate
    try:
        yield queue
    finally:
        queue.eager, queue.eager_propagate = previous


def drain(queue: PersistentJobQueue[Any], *, max_jobs: Optional[int] = None) -> int:
    """Run every due job in the calling thread, retries that become due at once included; return how many ran."""
    return queue.drain(max_jobs=max_jobs)


def enqueued_jobs(queue: PersistentJobQueue[J], job_type: Optional[str] = None, /, **match: Any) -> list[J]:
    """The stored jobs of ``job_type`` (all when None) matching ``match``, oldest first.

    ``match`` takes ``queue``, ``status``, ``priority``, your model's own
    fields by name, and ``data``: a dict matched as a subset of the payload
    (``data={"to": "ada@example.com"}`` ignores the payload's other keys).
    """
    query: dict[str, Any] = {} if job_type is None else {"type": job_type}
    model = queue.job_model
    for key, value in match.items():
        if key == "data":
            if not isinstance(value, Mapping):
                raise TypeError(f"data= must be a mapping to match as a subset, got {type(value).__name__}")
            query.update({f"data.{k}": v for k, v in value.items()})
        elif key in _QUEUE_FIELDS:
            query[_QUEUE_FIELDS[key]] = value
        elif key in model._fields:
            field = model._fields[key]
            query[field.db_field] = field.to_mongo(value)
        else:
            raise TypeError(f"{model.__name__} has no field {key!r} to match")
    return [load_job(model, doc) for doc in queue.store.admin.find_jobs(query)]


def assert_enqueued(
    queue: PersistentJobQueue[J], job_type: str, /, *, count: Optional[int] = None, **match: Any
) -> list[J]:
    """Assert that jobs of ``job_type`` matching ``match`` exist (exactly ``count`` if given); return them.

    Jobs in any status count, so it holds after :func:`drain` and in eager
    mode too; pass ``status="pending"`` to check only what still waits.
    """
    jobs = enqueued_jobs(queue, job_type, **match)
    if (count is None and not jobs) or (count is not None and len(jobs) != count):
        wanted = "at least one" if count is None else str(count)
        seen = [_summary(job) for job in enqueued_jobs(queue, job_type)][:10]
        raise AssertionError(
            f"expected {wanted} {job_type!r} job(s) matching {match}, found {len(jobs)}; "
            f"{job_type!r} jobs stored: {seen or 'none'}"
        )
    return jobs


def assert_not_enqueued(queue: PersistentJobQueue[Any], job_type: str, /, **match: Any) -> None:
    """Assert that no job of ``job_type`` matches ``match``."""
    jobs = enqueued_jobs(queue, job_type, **match)
    if jobs:
        raise AssertionError(
            f"expected no {job_type!r} job matching {match}, found {len(jobs)}: {[_summary(j) for j in jobs][:10]}"
        )


def _summary(job: BaseJob) -> dict[str, Any]:
    return {"id": str(job.pk), "status": job.status, "queue": job.queue, "data": job.data}
