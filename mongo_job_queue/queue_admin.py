"""The queue's reads and administration: job lookup and waits, stats, retry, cancel, purge, pause.

:class:`~mongo_job_queue.PersistentJobQueue` delegates these methods here
(they are documented there). Each one is a check of the caller's input, one
store call, and what this process must learn of it (a hook, a worker's
cached pause state).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Optional, TypeVar

from bson import ObjectId

from .clock import after_ms
from .errors import InvalidJobError, InvalidJobIdError, JobTimeout
from .loading import load_job
from .middleware import MiddlewareChain
from .model import BaseJob
from .status import ALL_STATUSES, FINISHED
from .store import JobStore, PauseState
from .worker import Worker

__all__ = ["QueueAdmin", "job_object_id"]

J = TypeVar("J", bound=BaseJob)


@dataclass(eq=False)
class QueueAdmin(Generic[J]):
    """Reads and administrative operations on one queue's jobs, for any process."""

    job_model: type[J]
    store: JobStore
    worker: Worker
    hooks: MiddlewareChain

    def get_job(self, job_id: ObjectId | str) -> Optional[J]:
        doc = self.store.admin.get(job_object_id(job_id))
        return self._instance(doc) if doc is not None else None

    def wait(self, job_id: ObjectId | str, timeout: Optional[float] = 30.0) -> Optional[J]:
        oid = job_object_id(job_id)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be None (no limit) or a number of seconds >= 0, got {timeout!r}")
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        interval = 0.05
        finished = set(FINISHED)
        while True:
            doc = self.store.admin.get(oid)
            if doc is None:
                return None
            if doc.get("status") in finished:
                return self._instance(doc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"job {job_id} still {doc.get('status')} after {timeout} s")
            time.sleep(min(interval, left))
            interval = min(interval * 2, 1.0)

    def counts(self, queue: Optional[str] = None) -> dict[str, int]:
        return self.store.admin.count_by_status(queue)

    def retry_job(self, job_id: ObjectId | str) -> bool:
        return self.store.admin.retry_job(job_object_id(job_id))

    def cancel_job(self, job_id: ObjectId | str) -> bool:
        oid = job_object_id(job_id)
        outcome = self.store.control.request_cancel(oid)
        if outcome == "cancelled":
            self.hooks.emit("on_cancelled", oid)
        return outcome is not None

    def cancel_jobs(
        self, *, job_type: Optional[str] = None, queue: Optional[str] = None, running: bool = False
    ) -> dict[str, int]:
        filt: dict[str, Any] = {}
        for key, value in (("type", job_type), ("queue", queue)):
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise InvalidJobError(
                        f"{'job_type' if key == 'type' else key} must be a non-empty str, got {value!r}"
                    )
                filt[key] = value
        if not filt:
            raise InvalidJobError("cancel_jobs() needs job_type or queue")
        cancelled, requested = self.store.control.cancel_jobs(filt, running=running)
        return {"cancelled": cancelled, "requested": requested}

    def purge(self, older_than_ms: int, statuses: Iterable[str] = FINISHED) -> int:
        if isinstance(older_than_ms, bool) or not isinstance(older_than_ms, int) or older_than_ms < 0:
            raise InvalidJobError(f"older_than_ms must be an int >= 0, got {older_than_ms!r}")
        try:
            return self.store.admin.purge(after_ms(self.store.now(), -older_than_ms), tuple(statuses))
        except ValueError as exc:
            raise InvalidJobError(str(exc)) from exc

    def stats(self) -> dict[str, dict[str, Any]]:
        stats = self.store.admin.queue_stats()
        paused = self.store.control.pause_state()
        for name in paused.queues - set(stats):
            stats[name] = {"counts": dict.fromkeys(ALL_STATUSES, 0), "oldest_due_age_s": None}
        for name, entry in stats.items():
            entry["paused"] = name in paused.queues
        return stats

    def pause(self, *, queues: Iterable[str] = (), job_types: Iterable[str] = ()) -> dict[str, list[str]]:
        state = self.store.control.set_paused(
            True, queues=_names(queues, "queues"), types=_names(job_types, "job_types")
        )
        self.worker.forget_pause_state()
        return _pause_dict(state)

    def resume(self, *, queues: Iterable[str] = (), job_types: Iterable[str] = ()) -> dict[str, list[str]]:
        state = self.store.control.set_paused(
            False, queues=_names(queues, "queues"), types=_names(job_types, "job_types")
        )
        self.worker.forget_pause_state()
        self.worker.notify()  # an idle worker here claims the resumed jobs now, not at its next poll
        return _pause_dict(state)

    def paused(self) -> dict[str, list[str]]:
        return _pause_dict(self.store.control.pause_state())

    def _instance(self, doc: dict[str, Any]) -> J:
        return load_job(self.job_model, doc)


def job_object_id(job_id: Any) -> ObjectId:
    """``job_id`` as an ObjectId.

    Raises:
        InvalidJobIdError: it is not an ObjectId or its 24-hex-digit string.
    """
    if isinstance(job_id, ObjectId):
        return job_id
    if isinstance(job_id, str) and ObjectId.is_valid(job_id):
        return ObjectId(job_id)
    raise InvalidJobIdError(f"job id must be an ObjectId or a 24-hex-digit str, got {job_id!r:.80}")


def _names(names: Iterable[str], what: Literal["queues", "job_types"]) -> list[str]:
    if isinstance(names, str):
        raise InvalidJobError(f"{what} must be a list of names, not the str {names!r}")
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidJobError(f"{what} holds an invalid name: {name!r}")
    return names


def _pause_dict(state: PauseState) -> dict[str, list[str]]:
    return {"queues": sorted(state.queues), "job_types": sorted(state.types)}
