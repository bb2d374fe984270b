"""Writes about jobs whose owner cannot write them: leases that ran out, and malformed documents.

A lease rescuer requeues (or fails) a job whose worker crashed or froze
(:meth:`Recovery.recover`), fenced on the old token *and* the lease still
being expired, so a heartbeat that lands first wins. A document that the
claim or the worker cannot use is failed with its reasons
(:meth:`Recovery.quarantine`). The owner's own writes are :mod:`.outcomes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..model import JobError
from ..status import CANCELLED, FAILED, PENDING, PROCESSING
from .handle import MAINTENANCE_MAX_TIME_MS, JobStore
from .leases import fence
from .outcomes import attempt_failed, pushed

__all__ = ["Recovery"]


class Recovery:
    """Lease recovery and quarantine, for the maintenance sweeps and the claim path."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def expired_leases(self, limit: int = 100) -> list[dict[str, Any]]:
        """Processing jobs whose lease ran out (their worker crashed or froze)."""
        query = {"status": PROCESSING, "lease_expires_at": {"$lt": self._store.now()}}
        # Whole documents: there are few (only stranded jobs), and the sweep checks them for damage.
        # The lease index answers it; the limit and maxTimeMS bound it, so a sweep never stalls its thread.
        return self._store.retry(
            lambda: list(
                self._store.collection.find(query, limit=limit, max_time_ms=MAINTENANCE_MAX_TIME_MS).hint("mjq_lease")
            ),
            "expired_leases",
        )

    def recover(self, doc: Mapping[str, Any], error: JobError, give_up: bool) -> bool:
        """Requeue (or fail, when attempts are spent) one job whose lease expired.

        Fenced on the token *and* on the lease still being expired, so a
        heartbeat that lands first wins and a live job is never taken. A job
        whose cancellation was requested ends ``cancelled``; the fence makes
        sure a request that arrives after the sweep's read is not lost.
        """
        now = self._store.now()
        cancel = bool(doc.get("cancel_requested"))
        filt = {
            **fence(doc["_id"], doc.get("lease_token")),
            **self._store.shard_key.of(doc),
            "lease_expires_at": {"$lt": now},
            "cancel_requested": True if cancel else {"$ne": True},
        }
        status = CANCELLED if cancel else FAILED if give_up else PENDING
        give_up = give_up or cancel
        # Unlike the owner's own writes, a rescue removes the token: the old
        # owner's late writes then match nothing *and* fail the "was it my
        # earlier try?" check of :mod:`.outcomes`, so they are reported as lost.
        ended = {"updated_at": now, "finished_at" if give_up else "run_at": now}
        update = attempt_failed(self._store, status, error, ended)
        update["$unset"]["lease_token"] = ""

        def call() -> bool:
            if self._store.collection.update_one(filt, update).matched_count:
                return True
            # Nothing matched: renewed or recovered by someone else, or an earlier
            # try of ours applied and only its reply was lost.
            return pushed(self._store, doc["_id"], error, self._store.shard_key.of(doc)) is not None

        recovered = self._store.retry(call, "recover")
        if recovered and give_up:
            self._store.finals.notify_one(doc, status)
        return recovered

    def quarantine(self, job_id: Any, problems: Sequence[str], *, from_status: str, token: str | None = None) -> bool:
        """Fail a malformed job document with the reasons, touching only fields that cannot be ill-typed.

        ``$set`` alone, no ``$push``/``$inc``: those would fail on the very
        fields that are broken. The claim path calls it for a document its
        update cannot apply to, the hygiene sweep for one no claim can see.
        """
        now = self._store.now()
        filt: dict[str, Any] = {"_id": job_id, "status": from_status}
        if token is not None:
            filt["lease_token"] = token
        record = {
            "type": "mongo_job_queue.errors.MalformedJob",
            "message": "; ".join(problems),
            "traceback": "",
            "attempt": None,
            "at": now,
            "lease_token": token,
        }
        update = {
            "$set": {"status": FAILED, "finished_at": now, "updated_at": now, "last_error": record},
            "$unset": {"lease_expires_at": ""},
        }
        failed = self._store.retry(
            lambda: self._store.collection.update_one(filt, update).matched_count == 1, "quarantine"
        )
        if failed and self._store.finals.active:
            # The document is malformed, so only the fields the listeners read are asked for.
            fields = dict.fromkeys(self._store.finals.fields, 1)
            found = self._store.retry(lambda: self._store.collection.find_one({"_id": job_id}, fields), "quarantine")
            self._store.finals.notify_one(found or {"_id": job_id}, FAILED)
        return failed
