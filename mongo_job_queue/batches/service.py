"""Batches as the app sees them: create one, add jobs while it is open, seal it, read, cancel and retry it.

The queue's ``batch``, ``get_batch``, ``cancel_batch`` and ``retry_batch``
delegate here. What fires the callbacks is :mod:`.tracker`; the batch
documents and counts are :mod:`mongo_job_queue.store.batches`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Optional, TypeVar, Union

from bson import ObjectId

from ..builder import JobBuilder
from ..enqueue import Enqueuer
from ..errors import BatchSealedError, InvalidBatchError, InvalidJobError
from ..model import BaseJob
from ..status import FAILED
from ..store import JobStore
from ..store.batches import FINISHED_STATE, OPEN, unfinished
from ..validation import check_nested
from .tracker import EVENTS, BatchTracker

__all__ = ["BatchInfo", "Batches", "Callback", "batch_object_id"]

J = TypeVar("J", bound=BaseJob)

#: A callback: ``(job_type, data)``, or a mapping of ``enqueue``'s arguments (``job_type``, ``data``, ``queue``...).
Callback = Union[tuple[str, Optional[Mapping[str, Any]]], Mapping[str, Any]]

#: What a callback given as a mapping may hold: enqueue's arguments, no unique key.
_CALLBACK_KEYS = frozenset(
    {"job_type", "data", "run_at", "delay_ms", "priority", "queue", "max_retries", "time_limit_ms"}
)


@dataclass(frozen=True)
class BatchInfo:
    """A batch as stored: its state, its jobs counted by status, and its callbacks."""

    id: ObjectId
    #: ``open``, ``sealed`` or ``finished``.
    state: str
    #: The batch's stored jobs by status (jobs removed by retention are not counted).
    counts: Mapping[str, int]
    #: The callback job id allocated for each event given (``complete``, ``success``, ``failure``).
    callbacks: Mapping[str, ObjectId]
    #: The events whose callback job was enqueued.
    fired: tuple[str, ...]
    #: The app's fields given to ``queue.batch()``, set on every job and callback of the batch.
    extra: Mapping[str, Any] = field(default_factory=dict)
    created_at: Optional[datetime] = None
    sealed_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None

    @property
    def total(self) -> int:
        """How many jobs of the batch are stored."""
        return sum(self.counts.values())

    @property
    def pending(self) -> int:
        """How many are not final yet."""
        return unfinished(self.counts)

    @property
    def sealed(self) -> bool:
        """No job can be added any more (sealed or finished)."""
        return self.state != OPEN

    @property
    def finished(self) -> bool:
        """Sealed, every job final, and the callbacks fired."""
        return self.state == FINISHED_STATE


def batch_object_id(batch_id: Any) -> ObjectId:
    """``batch_id`` as an ObjectId; InvalidBatchError unless it is one or its 24-hex-digit string."""
    if isinstance(batch_id, ObjectId):
        return batch_id
    if isinstance(batch_id, str) and ObjectId.is_valid(batch_id):
        return ObjectId(batch_id)
    raise InvalidBatchError(f"batch id must be an ObjectId or a 24-hex-digit str, got {batch_id!r:.80}")


class Batches(Generic[J]):
    """Every batch operation of one queue, over its store, job builder and enqueuer."""

    def __init__(self, store: JobStore, builder: JobBuilder[J], enqueuer: Enqueuer[J], tracker: BatchTracker) -> None:
        self._store = store
        self._builder = builder
        self._enqueuer = enqueuer
        self.tracker = tracker

    def create(self, callbacks: Mapping[str, Any], extra: Mapping[str, Any]) -> ObjectId:
        """Check the callbacks and fields, then store a new open batch; its id.

        Raises:
            InvalidBatchError: a callback or field is invalid; nothing was written.
        """
        batch_id = ObjectId()
        now = self._store.now()
        try:
            check_nested(dict(extra), what="batch fields")
        except InvalidJobError as exc:
            raise InvalidBatchError(str(exc)) from exc
        if extra:
            # The fields checked against the model as a job's first: an error names them, not a callback.
            try:
                self._builder.build({"job_type": "batch"}, extra, now)
            except InvalidJobError as exc:
                raise InvalidBatchError(f"batch fields: {exc}") from exc
        stored: dict[str, Any] = {}
        for event in EVENTS:
            spec = _callback_spec(event, callbacks.get(event))
            if spec is None:
                continue
            managed = {"batch_callback": {"batch_id": batch_id, "event": event}}
            try:
                doc = self._builder.build(spec, extra, now, managed=managed)
                self._builder.seal(doc)
                self._enqueuer.types.check([doc["type"]], strict=self._builder.config.strict_types)
            except InvalidJobError as exc:
                raise InvalidBatchError(f"on_{event}: {exc}") from exc
            stored[event] = {"id": ObjectId(), "job": spec}
        doc = {"_id": batch_id, "state": OPEN, "gen": 0, "callbacks": stored, "extra": dict(extra), "fired": []}
        doc.update(created_at=now, updated_at=now)
        self._store.batches.create(doc)
        return batch_id

    def add(self, batch_id: ObjectId, jobs: Iterable[Mapping[str, Any]], extra: Mapping[str, Any]) -> list[J]:
        """Insert jobs into an open batch (``jobs`` as ``enqueue_many`` takes them), ``extra`` under their own fields.

        The batch is read before the insert and again after it, the jobs
        inserted unclaimable in between (``run_at`` far ahead, their own in
        ``batch_staged_run_at``): if the batch is still open they are
        released in one update, if another process sealed it meanwhile they
        are deleted (no worker can have run one) and the batch checked.

        Raises:
            BatchSealedError: the batch is no longer open; nothing was added.
            InvalidJobError: a job is invalid; nothing was written.
        """
        self._open(batch_id)
        specs = []
        for index, spec in enumerate(jobs):
            if isinstance(spec, Mapping) and ("unique_key" in spec or "unique_for_ms" in spec):
                raise InvalidJobError(f"jobs[{index}]: a batch's jobs take no unique_key")
            specs.append({**extra, **spec} if isinstance(spec, Mapping) else spec)

        def confirm(docs: list[dict[str, Any]]) -> None:
            ids = [doc["_id"] for doc in docs]
            try:
                self._open(batch_id)
            except BatchSealedError:
                self._store.batches.remove_staged(ids)
                self.tracker.check_logged(batch_id)
                raise
            self._store.batches.release_staged(ids)

        return self._enqueuer.enqueue_many(specs, managed={"batch_id": batch_id}, confirm=confirm)

    def _open(self, batch_id: ObjectId) -> None:
        doc = self._store.batches.get(batch_id)
        if doc is None:
            raise InvalidBatchError(f"no batch {batch_id}")
        if doc.get("state") != OPEN:
            raise BatchSealedError(f"batch {batch_id} is {doc.get('state')}: no job can be added to it")

    def seal(self, batch_id: Any) -> None:
        """Seal the batch, then check it: one with every job final (or none) finishes now.

        A check that fails after the seal landed is logged, not raised: the
        batch is sealed, and the reconciler finishes it.
        """
        batch_id = batch_object_id(batch_id)
        if self._store.batches.seal(batch_id) is None:
            raise InvalidBatchError(f"no batch {batch_id}")
        self.tracker.check_logged(batch_id)

    def get(self, batch_id: Any) -> Optional[BatchInfo]:
        """The batch's state and counts, None if there is no such batch."""
        oid = batch_object_id(batch_id)
        doc = self._store.batches.get(oid)
        if doc is None:
            return None
        callbacks = doc.get("callbacks") or {}
        return BatchInfo(
            id=oid,
            state=str(doc.get("state")),
            counts=self._store.batches.counts(oid),
            callbacks={event: spec["id"] for event, spec in callbacks.items()},
            fired=tuple(event for event in EVENTS if event in (doc.get("fired") or ())),
            extra=dict(doc.get("extra") or {}),
            created_at=doc.get("created_at"),
            sealed_at=doc.get("sealed_at"),
            finished_at=doc.get("finished_at"),
        )

    def cancel(self, batch_id: Any) -> dict[str, int]:
        """Seal the batch, cancel its pending jobs and flag its running ones; ``{"cancelled", "requested"}``."""
        oid = batch_object_id(batch_id)
        if self._store.batches.seal(oid) is None:
            raise InvalidBatchError(f"no batch {oid}")
        cancelled, requested = self._store.control.cancel_jobs({"batch_id": oid}, running=True)
        self.tracker.check_logged(oid)  # an empty batch, or one whose last jobs ended meanwhile
        return {"cancelled": cancelled, "requested": requested}

    def retry(self, batch_id: Any) -> int:
        """Queue the batch's failed jobs again; a finished batch goes back to sealed. How many were queued.

        The jobs are queued first, then the batch's ``gen`` is incremented
        (and a finished batch goes back to sealed): a check that counted
        before the jobs were queued cannot finish the batch, its finish
        asks for the ``gen`` it read. The check after (or the reconciler's)
        finishes it again. Callbacks already fired never fire again.
        """
        oid = batch_object_id(batch_id)
        doc = self._store.batches.get(oid)
        if doc is None:
            raise InvalidBatchError(f"no batch {oid}")
        ids = self._store.batches.job_ids(oid, [FAILED])
        retried = self._store.admin.retry_jobs(ids, matching={"batch_id": oid}) if ids else 0
        if retried:
            self._store.batches.reopen(oid)
        self.tracker.check_logged(oid)
        return retried


def _callback_spec(event: str, value: Any) -> Optional[dict[str, Any]]:
    """A callback as ``enqueue`` arguments: from ``(job_type, data)`` or a mapping of enqueue's arguments."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and (value[1] is None or isinstance(value[1], Mapping)):
        return {"job_type": value[0], "data": dict(value[1] or {})}
    if isinstance(value, Mapping) and "job_type" in value:
        unknown = sorted(str(key) for key in value if key not in _CALLBACK_KEYS)
        if unknown:
            raise InvalidBatchError(
                f"on_{event}: unknown key(s) {', '.join(unknown)}; the batch's fields go to batch()"
            )
        return dict(value)
    raise InvalidBatchError(
        f"on_{event} must be a (job_type, data) tuple or a mapping with 'job_type', got {value!r:.80}"
    )
