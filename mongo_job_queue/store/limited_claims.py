"""The claim under limits: read the due jobs no full limiter holds back, admit each, then lease it (fenced).

Used by :class:`~mongo_job_queue.store.claims.Claims` whenever a limit (or a
mutex key) is in use. Per claim: one read of the full limiters (their jobs
are left out of the candidate read, so a saturated key costs no retries
and no attempts), one candidate read, and per job the admission (one
atomic update per limiter, :meth:`.limiter.Limiter.admit`) followed by the
job's own conditional claim. A job whose claim loses the race gives its
admission back at once; so every holder is a run that was claimed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Optional

from ..limits import Limit
from ..model import LeaseOwner
from ..status import PROCESSING
from .handle import JobStore
from .leases import ClaimedJob
from .limiter import Admission, Limiter

__all__ = ["LimitedClaims"]

_READ_MAX_TIME_MS = 5_000
_URGENT_FIRST = [("priority", -1), ("run_at", 1)]
#: Candidates read per claim beyond the jobs wanted: a few may lose races or be refused.
_SPARE = 4


class LimitedClaims:
    """Claims due jobs one admission at a time; the same lease and fencing as the plain claim."""

    def __init__(self, store: JobStore, limiter: Limiter) -> None:
        self._store = store
        self._limiter = limiter

    def claim(
        self,
        query: Mapping[str, Any],
        owner: LeaseOwner,
        limits: Sequence[Limit],
        want: int,
        abort: Optional[threading.Event],
        *,
        due_only: bool = True,
    ) -> list[ClaimedJob]:
        """Claim up to ``want`` jobs matching ``query``, each admitted by every limit that covers it."""
        from .claims import claim_update, lease_fields  # claims.py imports this module

        store, limiter = self._store, self._limiter
        token = uuid.uuid4().hex
        tries = 0
        expires: Optional[datetime] = None
        admitted: dict[Any, Admission] = {}

        def mine() -> list[dict[str, Any]]:
            found = {"status": PROCESSING, "lease_expires_at": expires, "lease_token": token}
            return list(store.collection.find(found, limit=want, max_time_ms=_READ_MAX_TIME_MS))

        def call() -> list[dict[str, Any]]:
            nonlocal tries, expires
            tries += 1
            if tries > 1 and expires is not None:
                earlier = mine()  # an earlier try may have claimed some before its reply was lost
                if earlier:
                    return earlier
            now = store.now()
            nor = limiter.blocked(limits, now)
            if nor is None:
                return []
            filt = {**query, "run_at": {"$lte": now}} if due_only else dict(query)
            read = {**filt, "$nor": nor} if nor else filt
            candidates = list(
                store.collection.find(read, sort=_URGENT_FIRST, limit=want + _SPARE, max_time_ms=_READ_MAX_TIME_MS)
            )
            if not candidates:
                return []
            lease = lease_fields(token, owner, store.now(), store.config.lease_ms)
            expires = lease["lease_expires_at"]
            claimed: list[dict[str, Any]] = []
            refused: set[str] = set()
            for doc in candidates:
                if len(claimed) >= want:
                    break
                admission = limiter.admit(doc, token, limits, now, lease["lease_expires_at"], refused)
                if admission is None:
                    continue
                admitted[doc["_id"]] = admission
                unchanged = {**filt, "_id": doc["_id"], "lease_token": doc.get("lease_token")}
                unchanged["attempts"] = doc.get("attempts")
                if store.collection.update_one(unchanged, claim_update(lease)).modified_count:
                    doc.update(lease)
                    doc["attempts"] = int(doc.get("attempts") or 0) + 1
                    doc.pop("progress", None)
                    claimed.append(doc)
                else:
                    limiter.undo(admitted.pop(doc["_id"]))
            return claimed

        try:
            docs = store.retry(call, "claim_limited", abort)
        except Exception:
            for admission in admitted.values():  # best effort: they expire with the lease otherwise
                try:
                    limiter.undo(admission)
                except Exception:  # noqa: BLE001
                    break
            raise
        ours = {doc["_id"] for doc in docs}
        for job_id, admission in admitted.items():
            if job_id in ours:
                limiter.hold(admission)
            else:
                limiter.undo(admission)
        return [ClaimedJob(doc, token) for doc in docs]
