"""Every exception the library raises, under one base class.

Catching :class:`MongoJobQueueError` catches them all. The control-flow
exceptions (:class:`RetryJob`, :class:`FailJob`) are raised by handlers to
steer the retry policy; they are not errors of the library.
"""

from __future__ import annotations


class MongoJobQueueError(Exception):
    """Base class for every exception raised by mongo_job_queue."""


class ConfigError(MongoJobQueueError, ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


class JobModelError(MongoJobQueueError, TypeError):
    """The injected job model is not a concrete subclass of BaseJob."""


class IndexSetupError(MongoJobQueueError, RuntimeError):
    """The jobs collection lacks an index the queue's guarantees rest on, and it could not be created."""


class HandlerError(MongoJobQueueError, ValueError):
    """A handler registration is invalid (duplicate type, not callable, bad policy)."""


class ChunkResultError(MongoJobQueueError, ValueError):
    """A batch handler's chunk result is invalid (a job not in the chunk, two outcomes for one job, a bad delay)."""


class ChunkJobFailed(MongoJobQueueError):
    """Recorded for a job that a batch handler marked retry or fail without an exception of its own."""


class InvalidJobError(MongoJobQueueError, ValueError):
    """A job to enqueue was rejected before anything was written to the database."""


class InvalidJobIdError(MongoJobQueueError, ValueError):
    """A job id is neither an ObjectId nor the 24 hexadecimal digits of one."""


class ScheduleError(MongoJobQueueError, ValueError):
    """A schedule definition is invalid (name, cron expression, interval, timezone, catch-up policy)."""


class QueueStateError(MongoJobQueueError, RuntimeError):
    """The queue was asked to do something its current state does not allow."""


class InvalidBatchError(MongoJobQueueError, ValueError):
    """A batch id is malformed, or a batch's callbacks or fields were rejected before anything was written."""


class BatchSealedError(QueueStateError):
    """A job was added to a batch that is no longer open (sealed, finished or cancelled)."""


class EagerJobFailed(MongoJobQueueError, AssertionError):
    """A job run eagerly at enqueue (testing mode with ``propagate``) did not complete: a failed test."""

    def __init__(self, message: str, *, job_id: object = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class LeaseExpired(MongoJobQueueError):
    """Recorded in a job's error history when its worker stopped renewing the lease."""


class MalformedJob(MongoJobQueueError):
    """Recorded when a stored job document is unusable (edited by hand, ill-typed fields)."""


class WorkerShutdown(MongoJobQueueError):
    """Recorded in a job's error history when its worker shut down before it finished."""


class EmbeddedServerError(MongoJobQueueError, RuntimeError):
    """The embedded test and demo server (:mod:`mongo_job_queue.dev.embedded`) could not be started."""


class JobCancelled(MongoJobQueueError):
    """Raised into a handler whose job's cancellation was requested (or by itself): the job ends ``cancelled``."""


class JobTimeout(MongoJobQueueError, TimeoutError):
    """:meth:`~mongo_job_queue.PersistentJobQueue.wait` ran out of time before the job finished."""


class JobTimeLimitExceeded(MongoJobQueueError):
    """Raised into a handler that ran past its ``time_limit_ms``, and recorded when one is abandoned after the grace."""


class RetryJob(MongoJobQueueError):
    """Raised by a handler to retry the job after ``delay_ms`` instead of the policy's wait."""

    def __init__(self, delay_ms: int, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_ms = _delay_ms(delay_ms, "RetryJob delay_ms")
        self.reason = reason


class FailJob(MongoJobQueueError):
    """Raised by a handler to fail the job for good, with no further retry."""


class InvalidLockError(MongoJobQueueError, ValueError):
    """A lock was asked for with invalid arguments (bad key, ``ttl_ms`` < 100 ms, a duration past 100 years)."""


class LockUnavailable(MongoJobQueueError, TimeoutError):
    """The lock is held by another holder: not acquired at once (``blocking=False``) or within ``timeout_ms``."""


class LockBackendError(MongoJobQueueError, ConnectionError):
    """A lock backend did not answer (timed out, unreachable); the call may or may not have applied."""


class LockLost(MongoJobQueueError):
    """A lease no longer holds its lock (expired, taken over, past ``max_lifetime_ms``): fenced writes refuse it."""


class WorkflowError(InvalidJobError):
    """Dependencies or a workflow graph are invalid (a cycle, an unknown job, a bad policy); nothing was written."""


class DependencyFailed(MongoJobQueueError):
    """Recorded when a blocked job is cancelled because a dependency failed for good or was cancelled."""


class LimitError(MongoJobQueueError, ValueError):
    """A limit definition is invalid (name, key, max_running, rate, burst, job types)."""


class Throttled(MongoJobQueueError):
    """Raised by a handler (say, on an HTTP 429) to run the job again after ``retry_after_ms``, no attempt used."""

    def __init__(self, retry_after_ms: int, reason: str = "throttled") -> None:
        super().__init__(reason)
        self.retry_after_ms = _delay_ms(retry_after_ms, "Throttled retry_after_ms")


def _delay_ms(value: int, what: str) -> int:
    """A handler's requested delay, checked before the exception exists (a bad one is the handler's bug)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} must be an int >= 0, got {value!r}")
    return value
