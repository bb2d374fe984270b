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

import itertools
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Optional

from pymongo import UpdateOne

from ..limits import MUTEX, Limit
from ..model import LeaseOwner
from ..status import PROCESSING
from .handle import JobStore
from .leases import ClaimedJob
from .limiter import RATE_SLOTS, Admission, Limiter, RateRefusal

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
        if not any(limit.name == MUTEX for limit in limits):
            # Definitions read before the first mutex enqueue: its jobs are left to claims that admit them.
            query = Limiter.unlimited(query)

        def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            now = store.now()
            nor = limiter.blocked(limits, now)
            if nor is None:
                return {}, []
            filt = {**query, "run_at": {"$lte": now}} if due_only else dict(query)
            found = {**filt, "$nor": nor} if nor else filt
            fair = next((limit for limit in limits if limit.fair), None)
            if fair is not None:
                return filt, self._in_turns(fair, found, want + _SPARE)
            return filt, list(
                store.collection.find(found, sort=_URGENT_FIRST, limit=want + _SPARE, max_time_ms=_READ_MAX_TIME_MS)
            )

        filt, candidates = store.retry(read, "claim_candidates", abort)
        if not candidates:
            return []
        token = uuid.uuid4().hex
        lease = lease_fields(token, owner, store.now(), store.config.lease_ms)
        refused: set[str] = set()
        claimed: list[ClaimedJob] = []
        #: Per rate limiter with no start to give now: its refusal and the jobs that wait for one.
        waiting: dict[str, tuple[RateRefusal, list[dict[str, Any]]]] = {}
        for doc in candidates:
            if len(claimed) >= want or (abort is not None and abort.is_set()):
                break
            paced = [lid for lid in limiter.ids_of(doc, limits) if lid in waiting]
            if paced:
                waiting[paced[0]][1].append(doc)
                continue
            tries = 0

            def take(doc: dict[str, Any] = doc) -> Optional[Admission]:
                """Admit, then claim this one job; each step safe to run again after a lost reply."""
                nonlocal tries
                tries += 1
                if tries > 1:
                    found = store.collection.find_one({"_id": doc["_id"], "lease_token": token, "status": PROCESSING})
                    if found is not None:  # an earlier try claimed it: ours, with its rates paid then
                        return _readmit(limiter, found, token, limits, lease["lease_expires_at"], store.now())
                now = store.now()
                # A retry asks MongoDB only: the hint it would read may be of its own earlier push.
                admission = limiter.admit(doc, token, limits, now, lease["lease_expires_at"], refused, tries == 1)
                unchanged = _unchanged(filt, doc)
                if isinstance(admission, RateRefusal):
                    waiting.setdefault(admission.lid, (admission, []))[1].append(doc)
                    return None
                if admission is None:
                    return None
                update = claim_update(lease)
                update["$unset"] = {**update["$unset"], RATE_SLOTS: ""}
                if store.collection.update_one(unchanged, update).modified_count:
                    return admission
                limiter.undo(admission)  # another worker took the job first
                return None

            admission = store.retry(take, "claim_limited", abort)
            if admission is None:
                continue
            limiter.hold(admission)
            doc.update(lease)
            doc["attempts"] = int(doc.get("attempts") or 0) + 1
            doc.pop("progress", None)
            doc.pop(RATE_SLOTS, None)
            claimed.append(ClaimedJob(doc, token))
        for refusal, docs in waiting.values():
            self._reserve(filt, refusal, docs)
        return claimed

    def _reserve(self, filt: Mapping[str, Any], refusal: RateRefusal, docs: Sequence[dict[str, Any]]) -> None:
        """Over their rate: the jobs wait for their exact starts, reserved in one step, with no attempt used.

        One compare-and-set takes the next starts of the rate (within
        :data:`~.limiter.RATE_HORIZON`), then one bulk write sets each job's
        ``run_at`` to its start, if no one touched the job since the read. A
        start reserved for a job another claimer took meanwhile is left
        unused: the rate under-spends, it never over-spends.
        """
        store = self._store
        slots = store.retry(lambda: self._limiter.reserve(refusal, store.now(), len(docs)), "reserve_starts")
        ops = [
            UpdateOne(
                _unchanged(filt, doc),
                {"$set": {"run_at": slot}, "$addToSet": {RATE_SLOTS: refusal.lid}},
            )
            for doc, slot in zip(docs, slots, strict=False)
        ]
        if not ops:
            return
        store.retry(lambda: store.collection.bulk_write(ops, ordered=False), "reserve_starts")

    def _in_turns(self, fair: Limit, found: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
        """Up to ``count`` candidates taken in turns from the key values of ``fair``, least recently served first.

        One ``distinct`` finds the values with claimable jobs, the limiter
        documents tell when each was last served, and one read per value
        (at most ``count`` values) takes its most urgent jobs; they are
        interleaved, a round at a time. Jobs with no value take a turn as
        one more value. So a value with 10,000 jobs gets one turn per round
        like a value with 10.
        """
        store = self._store
        assert fair.key is not None
        values = [v for v in store.collection.distinct(fair.key, dict(found)) if v is not None]
        order: list[Any] = self._limiter.turns(fair, values)[:count]
        groups = [{fair.key: value} for value in order]
        if len(groups) < count:
            groups.append({fair.key: None})
        per_group = -(-count // max(1, len(groups)))
        heads = [
            list(
                store.collection.find(
                    {**found, **group}, sort=_URGENT_FIRST, limit=per_group, max_time_ms=_READ_MAX_TIME_MS
                )
            )
            for group in groups
        ]
        interleaved = [doc for round_ in itertools.zip_longest(*heads) for doc in round_ if doc is not None]
        return interleaved[:count]


def _unchanged(filt: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """The filter that matches ``doc``'s job only while it is as read: claimable, with its lease token and attempts.

    ``_id`` comes first: the embedded test server plans by the first field
    it can use, and with the claim's ``status`` first it scanned every
    pending job (47 ms a write with 360 of them, against 2 ms by ``_id``).
    """
    rest = {field: cond for field, cond in filt.items() if field != "_id"}  # the job matched filt's own _id
    return {"_id": doc["_id"], **rest, "lease_token": doc.get("lease_token"), "attempts": doc.get("attempts")}


def _readmit(
    limiter: Limiter, found: dict[str, Any], token: str, limits: Sequence[Limit], until: datetime, now: datetime
) -> Admission:
    """The admission of a job an earlier try claimed (its reply lost): never dropped, its rates not spent again.

    Its holders were pushed before that claim, so pushing them again finds
    them (idempotent); the rates count as paid, like a reserved start.
    """
    ids = limiter.ids_of(found, limits)
    again = limiter.admit({**found, RATE_SLOTS: ids}, token, limits, now, until, set(), hinted=False)
    if isinstance(again, Admission):
        return again
    capped = [limit for limit in limits if limit.applies_to(found) and limit.max_running is not None]
    return Admission(found["_id"], token, tuple(limiter.ids_of(found, capped)))
