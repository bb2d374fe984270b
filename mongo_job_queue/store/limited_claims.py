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

from ..limits import MUTEX, Limit
from ..model import LeaseOwner
from ..status import PROCESSING
from . import rates
from .handle import JobStore
from .leases import ClaimedJob
from .limiter import RATE_SLOTS, Admission, Limiter, RateRefusal
from .strays import StrayClaims

__all__ = ["LimitedClaims"]

_READ_MAX_TIME_MS = 5_000
_URGENT_FIRST = [("priority", -1), ("run_at", 1)]
#: Candidates read per claim beyond the jobs wanted: a few may lose races or be refused.
_SPARE = 4


class LimitedClaims:
    """Claims due jobs one admission at a time; the same lease and fencing as the plain claim."""

    def __init__(self, store: JobStore, limiter: Limiter, strays: StrayClaims) -> None:
        self._store = store
        self._limiter = limiter
        self._strays = strays

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
        from .claims import claim_update, lease_fields, leased  # claims.py imports this module

        store, limiter = self._store, self._limiter
        if not any(limit.name == MUTEX for limit in limits):
            # Definitions read before the first mutex enqueue: its jobs are left to claims that admit them.
            query = Limiter.unlimited(query)

        nor: list[dict[str, Any]] = []

        def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            now = store.now()
            blocked = limiter.blocked(limits, now)
            if blocked is None:
                return {}, []
            nor[:] = blocked
            filt = {**query, "run_at": {"$lte": now}} if due_only else dict(query)
            found = {**filt, "$nor": blocked} if blocked else filt
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
        # Set when a take was retried (its lost try may lease its job after the retry looked) or a step
        # raised (the jobs claimed before are leased, and the call returns none): the token is then
        # watched, so the strays (:mod:`.strays`) are handed back; those returned are left to their runs.
        uncertain = False
        returned: list[ClaimedJob] = []
        try:
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
                        found = store.collection.find_one(
                            {"_id": doc["_id"], "lease_token": token, "status": PROCESSING}
                        )
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
                    if store.collection.update_one(unchanged, claim_update(lease)).modified_count:
                        return admission
                    limiter.undo(admission)  # another worker took the job first
                    return None

                try:
                    admission = store.retry(take, "claim_limited", abort)
                except Exception:
                    uncertain = True
                    raise
                uncertain = uncertain or tries > 1
                if admission is None:
                    continue
                limiter.hold(admission)
                claimed.append(ClaimedJob(leased(doc, lease), token))
            # Paced clauses left out: the jobs that wait for a start are the ones a reservation may give one to.
            unpaced = [clause for clause in nor if RATE_SLOTS not in clause]
            for refusal, docs in waiting.values():
                try:
                    self._reserve(filt, unpaced, limits, refusal, docs)
                except Exception:
                    if not claimed:
                        raise
                    # The jobs claimed are leased and admitted: returned, or nobody would run them before their
                    # lease expired. The starts reserved and not given are unused (the rate under-spends).
                    store.log.warning("reserving the starts of rate %s failed; running the jobs claimed", refusal.lid)
                    break
            returned = claimed
            return claimed
        finally:
            if uncertain:
                self._strays.watch(token, [lease["lease_expires_at"]], [c.doc for c in returned])

    def _reserve(
        self,
        filt: Mapping[str, Any],
        nor: Sequence[Mapping[str, Any]],
        limits: Sequence[Limit],
        refusal: RateRefusal,
        docs: Sequence[dict[str, Any]],
    ) -> None:
        """Over their rate: the jobs wait for their exact starts, reserved in one step, with no attempt used.

        One compare-and-set takes the next starts of the rate (within
        :data:`~.limiter.RATE_HORIZON`), then each start goes to one job, in
        order, by a write that matches only while no one touched the job
        since the read and no start of this rate is reserved for it. A start
        whose job another claimer took or reserved meanwhile goes to the next
        job: under contention the claimers read the same head of the queue,
        and the rate's starts were spent for nobody (three processes at 20/s
        ran 5-8 jobs a second). The next waiting jobs are read for the starts
        left, twice at most; a start with no job to give it to is unused.
        """
        store = self._store
        slots = store.retry(lambda: self._limiter.reserve(refusal, store.now(), len(docs)), "reserve_starts")
        pool, seen = list(docs), {doc["_id"] for doc in docs}
        slots = self._give(filt, refusal.lid, pool, slots)
        if "run_at" not in filt or "_id" in filt:
            return  # a claim of one given job, due or not: no other job is to be moved
        for _ in range(2):
            if not slots:
                return
            filt = {**filt, "run_at": {"$lte": store.now()}}
            pool = self._waiting(filt, nor, limits, refusal.lid, seen, len(slots) + _SPARE)
            if not pool:
                return
            slots = self._give(filt, refusal.lid, pool, slots)

    def _give(
        self, filt: Mapping[str, Any], lid: str, docs: Sequence[dict[str, Any]], slots: list[datetime]
    ) -> list[datetime]:
        """Give ``slots`` in order to ``docs`` still as read (their ``run_at`` too); the slots left.

        A job's ``run_at`` is the slot of every start it holds: a claimer that
        reserved for it since the read moved it, so the write matches nothing
        and the start goes to the next job (never two starts of one rate to
        one job). A start of ``lid`` it held and could no longer use (claimed
        too late, :func:`.rates.held_start`) is replaced; one of another rate
        is kept only if the new slot is within :data:`.rates.HELD_LATENESS_NS`
        of the old, else that rate is paid again at the new slot: a held
        start is never used later than that.
        """
        store = self._store
        for doc in docs:
            if not slots:
                break
            slot, tries = slots[0], 0

            def give(doc: dict[str, Any] = doc, slot: datetime = slot) -> bool:
                nonlocal tries
                tries += 1
                old = doc.get("run_at")
                near = isinstance(old, datetime) and (slot - old).total_seconds() * 1e9 < rates.HELD_LATENESS_NS
                kept = [m for m in doc.get(RATE_SLOTS) or [] if m != lid and near]
                mine = {**_unchanged(filt, doc), "run_at": old}
                update = {"$set": {"run_at": slot, RATE_SLOTS: [*kept, lid]}}
                # A try after the first may follow one that applied, its reply lost, and the job claimed since
                # (the claim clears the mark): nothing proves it did not, so the start counts as given. Never
                # to a second job: the rate would over-spend; at worst it is unused.
                return bool(store.collection.update_one(mine, update).matched_count) or tries > 1

            if store.retry(give, "reserve_starts"):
                slots = slots[1:]
        return slots

    def _waiting(
        self,
        filt: Mapping[str, Any],
        nor: Sequence[Mapping[str, Any]],
        limits: Sequence[Limit],
        lid: str,
        seen: set[Any],
        count: int,
    ) -> list[dict[str, Any]]:
        """Up to ``count`` more due jobs of limiter ``lid`` not yet read, none with a start of it reserved."""
        store, limiter = self._store, self._limiter
        found: dict[str, Any] = {**filt, RATE_SLOTS: {"$ne": lid}, "_id": {"$nin": list(seen)}}
        if nor:
            found["$nor"] = list(nor)
        docs = store.retry(
            lambda: list(store.collection.find(found, sort=_URGENT_FIRST, limit=count, max_time_ms=_READ_MAX_TIME_MS)),
            "reserve_starts",
        )
        seen.update(doc["_id"] for doc in docs)
        return [doc for doc in docs if lid in limiter.ids_of(doc, limits)]

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
    again = limiter.admit(found, token, limits, now, until, set(), hinted=False, paid=ids)
    if isinstance(again, Admission):
        return again
    capped = [limit for limit in limits if limit.applies_to(found) and limit.max_running is not None]
    return Admission(found["_id"], token, tuple(limiter.ids_of(found, capped)))
