"""Chunked (batch) handlers: ``fn(jobs)`` runs many jobs in one call, and says per job how each ended.

A batch handler returns ``None`` (every job done) or a :class:`ChunkResult`
naming, per job, one of four outcomes: done (with a result), retry (after a
delay, or when the retry policy says), fail for good, or cancel. A job the
result does not name is done, as in Oban Pro's Chunk worker and River's
``WorkMany``: the result lists the exceptions. An exception out of ``fn``
retries every job of the chunk, each on its own attempt count and under the
handler's retry policy, exactly as if that job alone had raised it.

The worker side (claiming a chunk, the heartbeat, the bulk outcome write) is
:mod:`.worker.chunks`; :func:`register_batch_handler` is the registration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

from bson import ObjectId

from .clock import MAX_DURATION_MS
from .errors import ChunkJobFailed, ChunkResultError, FailJob, HandlerError, JobCancelled, RetryJob
from .handlers import ChunkSpec, Handler, HandlerRegistry
from .model import BaseJob, object_id
from .retry import RetryPolicy, RetryStrategy, StopStrategy, WaitStrategy

__all__ = ["MAX_CHUNK_SIZE", "BatchHandlerFn", "ChunkResult", "JobOutcome", "register_batch_handler"]

#: The largest ``max_size``: one chunk is one bulk write and one ``$in`` read back.
MAX_CHUNK_SIZE = 1_000

BatchHandlerFn = Callable[[list[Any]], Optional["ChunkResult"]]
OutcomeKind = Literal["done", "retry", "fail", "cancel"]


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job of a chunk, as the handler said."""

    kind: OutcomeKind
    result: Any = None
    #: For a retry: the delay the handler asked for (None: the retry policy's wait decides).
    delay_ms: Optional[int] = None
    error: Optional[BaseException] = None

    def exception(self) -> BaseException:
        """The exception a retry or failure is recorded with (and, for a retry, decided on)."""
        if self.kind == "retry" and self.delay_ms is not None:
            return RetryJob(self.delay_ms, str(self.error) if self.error is not None else "retry requested")
        if self.error is not None:
            return self.error
        if self.kind == "fail":
            return FailJob("failed by the batch handler")
        return ChunkJobFailed("retry requested by the batch handler")


DONE = JobOutcome("done")


def _job_id(job: Any) -> ObjectId:
    """The id of a job given as the app's instance, an ObjectId or its 24-hex-digit string."""
    found = object_id(job.pk if isinstance(job, BaseJob) else job)
    if found is not None:
        return found
    raise ChunkResultError(f"a chunk result names jobs by instance, ObjectId or id string, got {job!r:.80}")


def _error(error: Any) -> Optional[BaseException]:
    if error is None or isinstance(error, BaseException):
        return error
    if isinstance(error, str):
        return ChunkJobFailed(error)
    raise ChunkResultError(f"error must be an exception, a str or None, got {type(error).__name__}")


class ChunkResult:
    """Per-job outcomes of one chunk; each method returns the result, so calls chain.

    Raises:
        ChunkResultError: a job given twice, a job reference of the wrong
            type, a bad delay or error (at once); a job not in the chunk
            (when the worker reads the result, failing the chunk's call).
    """

    def __init__(self) -> None:
        self._outcomes: dict[ObjectId, JobOutcome] = {}

    def done(self, job: Any, result: Any = None) -> ChunkResult:
        """The job completed; ``result`` is stored as for a single handler's return value."""
        return self._set(job, JobOutcome("done", result=result))

    def retry(self, job: Any, error: Any = None, *, delay_ms: Optional[int] = None) -> ChunkResult:
        """Retry the job: after ``delay_ms``, or as the retry policy decides for ``error``; within its max_retries."""
        if delay_ms is not None and (
            isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or not 0 <= delay_ms <= MAX_DURATION_MS
        ):
            raise ChunkResultError(f"delay_ms must be an int from 0 to {MAX_DURATION_MS}, got {delay_ms!r:.80}")
        return self._set(job, JobOutcome("retry", delay_ms=delay_ms, error=_error(error)))

    def fail(self, job: Any, error: Any = None) -> ChunkResult:
        """Fail the job for good, with no further retry."""
        return self._set(job, JobOutcome("fail", error=_error(error)))

    def cancel(self, job: Any) -> ChunkResult:
        """End the job ``cancelled``."""
        return self._set(job, JobOutcome("cancel"))

    def _set(self, job: Any, outcome: JobOutcome) -> ChunkResult:
        job_id = _job_id(job)
        if job_id in self._outcomes:
            raise ChunkResultError(f"job {job_id} already has an outcome in this chunk result ({self[job_id].kind})")
        self._outcomes[job_id] = outcome
        return self

    def __getitem__(self, job: Any) -> JobOutcome:
        return self._outcomes[_job_id(job)]

    def __len__(self) -> int:
        return len(self._outcomes)

    def outcomes(self) -> Mapping[ObjectId, JobOutcome]:
        return dict(self._outcomes)


def resolve(returned: Any, ids: Iterable[ObjectId]) -> dict[ObjectId, JobOutcome]:
    """Every job's outcome from what ``fn`` returned: None is all done, a job a result does not name is done.

    Raises:
        ChunkResultError: not None nor a ChunkResult, or it names a job not in the chunk.
    """
    chunk = list(ids)
    if returned is None:
        return dict.fromkeys(chunk, DONE)
    if not isinstance(returned, ChunkResult):
        raise ChunkResultError(f"a batch handler returns None or a ChunkResult, got {type(returned).__name__}")
    given = returned.outcomes()
    unknown = sorted(str(job_id) for job_id in set(given) - set(chunk))
    if unknown:
        raise ChunkResultError(f"the chunk result names job(s) not in the chunk: {', '.join(unknown[:10])}")
    return {job_id: given.get(job_id, DONE) for job_id in chunk}


def _one_job(fn: BatchHandlerFn) -> Callable[[Any], Any]:
    """``fn`` as a single handler: a chunk of one, for the paths that run one given job (eager, ``run_job_now``)."""

    def run_one(job: Any) -> Any:
        outcome = resolve(fn([job]), [job.pk])[job.pk]
        if outcome.kind == "done":
            return outcome.result
        if outcome.kind == "cancel":
            raise JobCancelled(f"job {job.pk}: cancelled by the batch handler")
        exc = outcome.exception()
        if outcome.kind == "fail" and not isinstance(exc, FailJob):
            raise FailJob(str(exc)) from exc
        raise exc

    run_one.__qualname__ = getattr(fn, "__qualname__", "batch_handler")
    run_one.__module__ = getattr(fn, "__module__", __name__)
    return run_one


def _stored_key(model: type[BaseJob], key: Optional[str]) -> Optional[str]:
    """The database name of the model field ``key`` (None: no partitioning)."""
    if key is None:
        return None
    fields: Mapping[str, Any] = getattr(model, "_fields", {})
    field = fields.get(key) if isinstance(key, str) else None
    if field is None or key in {"id", "status", "lease_token", "type"}:
        raise HandlerError(f"key must name a field of {model.__name__} to partition chunks by, got {key!r:.80}")
    return str(field.db_field)


def register_batch_handler(
    registry: HandlerRegistry,
    model: type[BaseJob],
    job_type: str,
    fn: BatchHandlerFn,
    *,
    max_size: int = 100,
    max_wait_ms: int = 1000,
    key: Optional[str] = None,
    stop: Optional[StopStrategy] = None,
    wait: Optional[WaitStrategy] = None,
    retry: Optional[RetryStrategy] = None,
    max_retries: Optional[int] = None,
    time_limit_ms: Optional[int] = None,
) -> None:
    """Register ``fn(jobs)`` as the batch handler of ``job_type`` (see the module and docs/chunks.rst).

    Raises:
        HandlerError: as ``register_handler``, or a bad ``max_size``, ``max_wait_ms`` or ``key``.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or not 1 <= max_size <= MAX_CHUNK_SIZE:
        raise HandlerError(f"max_size must be an int from 1 to {MAX_CHUNK_SIZE}, got {max_size!r:.80}")
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int) or not 0 <= max_wait_ms <= 3_600_000:
        raise HandlerError(f"max_wait_ms must be an int from 0 to 3600000, got {max_wait_ms!r:.80}")
    if not callable(fn):
        raise HandlerError(f"batch handler for {job_type!r} must be callable, got {type(fn).__name__}")
    spec = ChunkSpec(fn, max_size, max_wait_ms, _stored_key(model, key))
    policy = RetryPolicy(stop=stop, wait=wait, retry=retry)
    registry.add(Handler(job_type, _one_job(fn), policy, max_retries, time_limit_ms, spec))
