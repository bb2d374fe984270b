"""The abstract job document that applications subclass.

The library never defines a concrete collection: the app's subclass picks the
collection, the connection alias and any extra fields or indexes, and is
injected into :func:`~mongo_job_queue.create_job_queue`.
"""

from __future__ import annotations

import os
import socket
import traceback
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional

from bson import ObjectId
from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    DynamicField,
    EmbeddedDocument,
    EmbeddedDocumentField,
    EmbeddedDocumentListField,
    IntField,
    ListField,
    ObjectIdField,
    StringField,
)

from .config import QueueConfig
from .errors import JobModelError, QueueStateError, Throttled
from .status import ALL_STATUSES, PENDING, JobStatus  # JobStatus: its old import path

__all__ = [
    "LIBRARY_FIELDS",
    "BaseJob",
    "JobError",
    "JobStatus",
    "LeaseOwner",
    "check_job_model",
    "job_log_extra",
    "object_id",
    "safe_str",
    "truncate",
]


def _plain_fields(doc: EmbeddedDocument) -> dict[str, Any]:
    """``doc``'s fields as stored, in declaration order, as plain values: no per-write conversion by MongoEngine."""
    return {name: getattr(doc, name) for name in doc._fields_ordered}


class LeaseOwner(EmbeddedDocument):
    """Who holds (or last held) a job's lease, for debugging stuck jobs."""

    host = StringField()
    pid = IntField()
    worker_id = StringField()

    @classmethod
    def current(cls, worker_id: Optional[str] = None) -> LeaseOwner:
        """This process as a lease owner; a worker builds it once and writes it into every claim."""
        return cls(host=socket.gethostname(), pid=os.getpid(), worker_id=worker_id or uuid.uuid4().hex[:12])

    def as_doc(self) -> dict[str, Any]:
        """The stored form, built without MongoEngine's per-write conversion (claims are the hot path)."""
        return _plain_fields(self)


class JobError(EmbeddedDocument):
    """One failed attempt: what was raised, where, and under which lease."""

    type = StringField()
    message = StringField()
    traceback = StringField()
    attempt = IntField()
    at = DateTimeField()
    lease_token = StringField()

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, attempt: Optional[int], at: datetime, token: Optional[str], config: QueueConfig
    ) -> JobError:
        """A bounded record of ``exc`` holding strings only, so no traceback frame is kept alive."""
        try:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:  # noqa: BLE001 - str() of the exception may raise inside
            tb = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: <unprintable>"
        return cls(
            type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=truncate(safe_str(exc), config.max_error_chars),
            traceback=truncate(tb, config.max_traceback_chars, keep_tail=True),
            attempt=attempt,
            at=at,
            lease_token=token,
        )

    def as_doc(self) -> dict[str, Any]:
        """The stored form, pushed into ``errors`` and set as ``last_error``."""
        return _plain_fields(self)


def object_id(value: Any) -> Optional[ObjectId]:
    """``value`` as an ObjectId if it is one or its 24-hex-digit string, else None (job ids given by the app)."""
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    return None


def safe_str(value: BaseException) -> str:
    """``str(value)``, or a placeholder: a handler's exception may have a ``__str__`` that raises."""
    try:
        return str(value)
    except BaseException:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}>"


def job_log_extra(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra`` of every log line about a job, for structured (JSON) log formatters."""
    return {
        "job_id": str(doc.get("_id")),
        "job_type": doc.get("type"),
        "queue": doc.get("queue"),
        "attempt": doc.get("attempts"),
    }


def truncate(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut when there is room."""
    if len(text) <= limit:
        return text
    marker = f"...[{len(text) - limit} chars truncated]..."
    if limit <= len(marker):
        return text[-limit:] if keep_tail else text[:limit]
    keep = limit - len(marker)
    return marker + text[len(text) - keep :] if keep_tail else text[:keep] + marker


class BaseJob(Document):
    """Abstract MongoEngine document holding everything the queue needs.

    Subclass it, add fields, and set ``meta`` (collection, ``db_alias``,
    indexes). The indexes declared here are inherited and merged with yours.

    The claim index follows the ESR rule (equality, sort, range): ``status``,
    ``queue`` and ``type`` are matched by equality/``$in``, ``priority`` and
    ``run_at`` give the sort, and ``run_at`` is also the ``$lte now`` range.
    """

    type = StringField(required=True, max_length=200)
    status = StringField(required=True, default=PENDING, choices=ALL_STATUSES)
    data = DictField()
    queue = StringField(required=True, default="default", max_length=200)
    priority = IntField(required=True, default=0)
    run_at = DateTimeField(required=True)
    attempts = IntField(required=True, default=0, min_value=0)
    max_retries = IntField(required=True, min_value=0)
    #: True when no max_retries was given at enqueue: the stored one is a
    #: default, and the handler's, where the job runs, decides (see retry_limit).
    max_retries_default = BooleanField()
    #: The job's own time limit from enqueue (``0``: none); without it the handler's, or the config's, applies.
    time_limit_ms = IntField(min_value=0)

    lease_owner = EmbeddedDocumentField(LeaseOwner)
    lease_token = StringField()
    lease_expires_at = DateTimeField()

    created_at = DateTimeField(required=True)
    started_at = DateTimeField()
    finished_at = DateTimeField()
    updated_at = DateTimeField(required=True)

    last_error = EmbeddedDocumentField(JobError)
    errors = EmbeddedDocumentListField(JobError)
    result = DynamicField()
    #: Metadata that middleware carries with a job, e.g. a trace context.
    headers = DictField()
    #: Set by ``enqueue(unique_key=...)``; held (in the unique index) until a
    #: later enqueue of the same key finds this job finished and releases it.
    unique_key = StringField()
    #: With ``unique_for_ms``: the key stays reserved until then, finished or not.
    unique_until = DateTimeField()
    #: Set by ``cancel_job`` on a running job; its worker learns it at the next heartbeat.
    cancel_requested = BooleanField()
    #: Markers of the latest administrative writes (``retry_job``, ``cancel_job``,
    #: ``cancel_jobs``), a few at most: a call retried after a lost reply finds
    #: its own earlier write by its marker, whatever the job went through since.
    admin_marks = ListField(StringField())
    #: The latest :meth:`report_progress`: ``percent``, ``message`` and ``at``.
    progress = DictField()
    #: Why the handler's return value was not stored (unencodable, too large).
    result_error = StringField()
    #: Set by ``enqueue(mutex_key=...)``: at most one job holding it runs at a time (see :doc:`limits`).
    mutex_key = StringField(max_length=1000)
    #: The rate limiters that reserved this job's start at its ``run_at`` (see :doc:`limits`).
    rate_slots = ListField(StringField())
    #: Name of the schedule that enqueued this job, if any.
    schedule = StringField()
    #: The schedule's fire time this job is for (naive UTC); with ``schedule``, unique.
    fire_time = DateTimeField()
    #: The jobs this one waits for, while ``blocked`` (see :doc:`workflows`).
    depends_on = ListField(ObjectIdField())
    #: What a dependency that failed for good or was cancelled does to this job, by dependency id
    #: (``cancel``, ``ignore`` or ``continue_with_results``).
    dependency_policies = DictField()
    #: Each dependency's outcome, copied in when it ended: ``status`` and a size-bounded ``result``.
    dependency_outcomes = DictField()
    #: Why the dependencies' results (or outcomes) were left out at release: they did not fit in this job.
    dependency_results_error = StringField()
    #: Set on a job that some job depends on: its final write looks for blocked dependents.
    has_dependents = BooleanField()
    #: The mark of the one write that released this job from ``blocked`` (a retried release finds its own).
    released_by = StringField()
    #: The batch this job belongs to (``queue.batch()``); its counts are read from the jobs by this field.
    batch_id = ObjectIdField()
    #: While a batch's add confirms the batch is open: the job's ``run_at`` (held far in the future meanwhile).
    batch_staged_run_at = DateTimeField()
    #: On a batch's callback job: ``{"batch_id": ..., "event": "complete" | "success" | "failure"}``.
    batch_callback = DictField()

    meta: dict[str, Any] = {
        "abstract": True,
        # The queue creates the indexes itself, under a lock, before its first
        # use of the collection (store/indexes.py). MongoEngine's lazy
        # creation would let other threads insert while they are being built.
        "auto_create_index": False,
        "indexes": [
            {
                "name": "mjq_claim",
                "fields": ["status", "queue", "type", "-priority", "run_at"],
            },
            {
                # An idle worker's "when is the next delayed job due": the earliest run_at of its queues and
                # types, read without sorting every delayed job (the claim index has priority before run_at).
                # Only pending jobs are indexed.
                "name": "mjq_due",
                "fields": ["queue", "type", "run_at"],
                "partialFilterExpression": {"status": "pending"},
            },
            {
                # Orphan sweep: processing jobs whose lease expired.
                "name": "mjq_lease",
                "fields": ["status", "lease_expires_at"],
            },
            {
                # At most one job per unique key; jobs without a key are not
                # indexed. Sparse rather than partial: the same meaning as
                # {unique_key: {$exists: true}}, on every server and on mongomock.
                "name": "mjq_unique",
                "fields": ["unique_key"],
                "unique": True,
                "sparse": True,
            },
            {
                # One job per (schedule, fire time), whichever process fires
                # it first; jobs that no schedule enqueued are not indexed.
                # It also serves "the latest job of this schedule".
                "name": "mjq_schedule",
                "fields": ["schedule", "fire_time"],
                "unique": True,
                "sparse": True,
            },
            {
                # The blocked dependents of a job that just ended; only blocked jobs are indexed.
                "name": "mjq_dependents",
                "fields": ["depends_on"],
                "partialFilterExpression": {"status": "blocked"},
            },
            {
                # The sweep of blocked jobs whose release notice was lost, in _id order.
                "name": "mjq_blocked",
                "fields": ["status", "_id"],
                "partialFilterExpression": {"status": "blocked"},
            },
            {
                # A batch's counts by status, one covered scan; jobs of no batch are not indexed.
                "name": "mjq_batch",
                "fields": ["batch_id", "status"],
                "partialFilterExpression": {"batch_id": {"$exists": True}},
            },
        ],
    }

    @classmethod
    def drop_collection(cls) -> None:
        """Drop the jobs collection; the queue creates its indexes again before it next uses it."""
        from .store.indexes import forget_prepared  # the store imports this module: imported at use

        super().drop_collection()
        forget_prepared(cls)

    def is_cancel_requested(self) -> bool:
        """Whether this job's cancellation was requested; a long handler checks it between steps.

        Inside a handler this reads no database: the worker's heartbeat (and
        :meth:`report_progress`) keep it up to date.
        """
        context = getattr(self, "_mjq_context", None)
        if context is not None:
            return bool(context.cancel_requested())
        return bool(self.cancel_requested)

    def report_progress(self, percent: float, message: Optional[str] = None) -> None:
        """Record how far the handler got (0 to 100), visible to other processes.

        Written under the lease (a worker that lost it cannot overwrite the
        new owner's progress), at most every ``progress_min_interval_ms``;
        reports in between are carried by the next heartbeat.

        Raises:
            JobCancelled: the job's cancellation was requested; let it
                propagate and the job ends ``cancelled``.
            LeaseExpired: the lease was lost; another worker may run the job.
            QueueStateError: called outside a handler run by the queue.

        In a batch handler neither JobCancelled nor LeaseExpired is raised
        (it would end the call for the whole chunk): the job alone ends
        ``cancelled``, or with nothing written, when the chunk returns.
        """
        context = getattr(self, "_mjq_context", None)
        if context is None:
            raise QueueStateError("report_progress() works only inside a handler run by the queue")
        context.report_progress(percent, message)

    def dependency_results(self) -> dict[str, Any]:
        """The results of the dependencies that completed, by job id (str), as copied in at release.

        Each is bounded (see :doc:`workflows`): a larger one is left out, and
        :meth:`dependency_statuses` still says it completed.
        """
        outcomes = self.dependency_outcomes or {}
        return {key: o.get("result") for key, o in outcomes.items() if o.get("status") == "completed" and "result" in o}

    def dependency_statuses(self) -> dict[str, str]:
        """How each dependency ended, by job id (str): ``completed``, ``failed``, ``cancelled`` or ``deleted``."""
        return {key: str(o.get("status")) for key, o in (self.dependency_outcomes or {}).items()}

    def failed_dependencies(self) -> dict[str, str]:
        """The dependencies that did not complete, by job id (str), with their status (``continue_with_results``)."""
        return {key: status for key, status in self.dependency_statuses().items() if status != "completed"}

    def throttle(self, retry_after_ms: int) -> None:
        """Stop this run and run the job again after ``retry_after_ms``, no attempt used (say, on an HTTP 429).

        Raises:
            Throttled: always; let it propagate out of the handler.
        """
        raise Throttled(retry_after_ms)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pk} {self.type} {self.status} attempt={self.attempts}>"


#: Field names the queue owns; ``enqueue(**extra_fields)`` may not set them.
LIBRARY_FIELDS = frozenset(BaseJob._fields) - {"id"}


def check_job_model(job_model: Any) -> None:
    """Raise :class:`~mongo_job_queue.errors.JobModelError` unless ``job_model`` is a concrete BaseJob subclass."""
    if not isinstance(job_model, type) or not issubclass(job_model, BaseJob):
        raise JobModelError(f"job_model must be a subclass of mongo_job_queue.BaseJob, got {job_model!r}")
    if job_model._meta.get("abstract"):
        raise JobModelError(f"job_model {job_model.__name__} is abstract: subclass it and give it a collection")
