"""The app's handle on one batch: ``with queue.batch(...) as batch: batch.enqueue(...)``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Optional, TypeVar

from bson import ObjectId

from ..builder import job_arguments
from ..errors import BatchSealedError, InvalidBatchError
from ..forwarding import parameters_of
from ..model import BaseJob
from .service import Batches, BatchInfo

__all__ = ["Batch"]

J = TypeVar("J", bound=BaseJob)


class Batch(Generic[J]):
    """An open batch: add jobs with :meth:`enqueue` or :meth:`enqueue_many`, then seal it.

    Leaving the ``with`` block seals it, also when the block raised: the
    jobs already added run, and the callbacks fire once they are final (an
    open batch would never finish). To stop them, call
    ``queue.cancel_batch(batch.id)`` in your ``except``.
    """

    def __init__(self, batches: Batches[J], batch_id: ObjectId, extra: Mapping[str, Any]) -> None:
        self._batches = batches
        self._id = batch_id
        self._extra = dict(extra)
        self._sealed = False

    @classmethod
    def create(cls, batches: Batches[J], callbacks: Mapping[str, Any], extra: Mapping[str, Any]) -> Batch[J]:
        """Store a new open batch (see :meth:`Batches.create`) and return its handle."""
        return cls(batches, batches.create(callbacks, extra), extra)

    @property
    def id(self) -> ObjectId:
        """The batch's id, for :meth:`~mongo_job_queue.PersistentJobQueue.get_batch` and the command line."""
        return self._id

    def __enter__(self) -> Batch[J]:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.seal()

    @parameters_of(job_arguments)
    def enqueue(self, *args: Any, **kwargs: Any) -> J:
        """Add one job, as :meth:`~mongo_job_queue.PersistentJobQueue.enqueue` takes it (but no unique key).

        Raises:
            BatchSealedError: the batch is sealed; nothing was written.
            InvalidJobError: bad input, or a ``unique_key``; nothing was written.
        """
        spec, extra_fields = job_arguments(*args, **kwargs)
        return self.enqueue_many([{**{k: v for k, v in spec.items() if v is not None}, **extra_fields}])[0]

    #: Add one job while the batch is open (the same as :meth:`enqueue`).
    add = enqueue

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[J]:
        """Add jobs in one bulk write, each a mapping of :meth:`enqueue`'s arguments.

        Raises:
            BatchSealedError: the batch is sealed; nothing was written.
            InvalidJobError: a job is invalid (the message names its index); nothing was written.
        """
        if self._sealed:
            raise BatchSealedError(f"batch {self._id} is sealed: no job can be added to it")
        return self._batches.add(self._id, jobs, self._extra)

    def seal(self) -> None:
        """No more jobs: the batch finishes once every job is final (at once when it has none); idempotent."""
        self._sealed = True
        self._batches.seal(self._id)

    def info(self) -> BatchInfo:
        """The batch as stored now (see :class:`BatchInfo`); InvalidBatchError if its document is gone."""
        found = self._batches.get(self._id)
        if found is None:
            raise InvalidBatchError(f"no batch {self._id}: its document was removed")
        return found

    def __repr__(self) -> str:
        return f"<Batch {self._id}{' sealed' if self._sealed else ''}>"
