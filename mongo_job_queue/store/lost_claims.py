"""Claim writes whose reply was lost, and taking over the jobs they leased.

A claim write whose reply never came (a timeout on a busy server, a dropped
connection) may still apply on the server, and may do so after the retry
looked for it: a timed-out ``findAndModify`` can lease any due job, seconds
later. Nobody would run that job; it would wait out its lease, and the
rescue would count an attempt that never ran (with no retries left, fail a
job that never ran). So every claim write registers its token before it is
sent and forgets it once its reply is read. The retry, and every later
claim of this process, take over what a registered token leased: one fenced
write per job moves it to a fresh token and a fresh lease, and it runs at
once as the attempt its claim counted.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument

from ..clock import after_ms
from ..model import LeaseOwner
from ..status import PROCESSING
from .handle import JobStore
from .leases import ClaimedJob, new_lease

__all__ = ["LostClaims"]

# Bound on each take-over write (index: status, lease_expires_at).
_TAKE_OVER_MAX_TIME_MS = 5_000


class LostClaims:
    """The tokens of this process's claim writes that have no reply yet, each with the lease it wrote."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        # token -> (lease expiry it wrote, when to forget it)
        self._unanswered: dict[str, tuple[datetime, datetime]] = {}

    def sending(self, token: str, expires: datetime) -> None:
        """Register a claim write about to be sent: until its reply is read, what it leases is taken over.

        It is forgotten a lease after its own lease ran out: by then the
        rescue has returned anything it leased to the queue.
        """
        with self._lock:
            self._unanswered[token] = (expires, after_ms(expires, self._store.config.lease_ms))

    def answered(self, *tokens: str) -> None:
        """The reply of these claim writes was read: what they leased is known to their claim."""
        with self._lock:
            for token in tokens:
                self._unanswered.pop(token, None)

    def pending(self) -> bool:
        """Whether some claim write of this process may have leased jobs nobody runs."""
        return bool(self._unanswered)

    def take_over(self, owner: LeaseOwner, limit: int, scope: Mapping[str, Any]) -> list[ClaimedJob]:
        """Lease to ``owner`` up to ``limit`` jobs in ``scope`` that an unanswered claim write leased.

        Each take-over is itself a claim write, registered like one: if this
        call fails midway, a rerun (it is safe to rerun) finds every job it
        took, under the new tokens.
        """
        store = self._store
        taken: list[ClaimedJob] = []
        ours: set[str] = set()
        while len(taken) < limit and self._unanswered:
            now = store.now()
            with self._lock:
                self._unanswered = {t: v for t, v in self._unanswered.items() if v[1] > now}
                # Not the tokens of this call's own take-overs: those jobs are taken.
                lost = {t: v for t, v in self._unanswered.items() if t not in ours}
            tokens = list(lost)
            expiries = [expires for expires, _ in lost.values()]
            if not tokens:
                break
            token = uuid.uuid4().hex
            lease = new_lease(token, owner, now, store.config.lease_ms)
            self.sending(token, lease["lease_expires_at"])
            ours.add(token)
            doc = store.collection.find_one_and_update(
                {**scope, "status": PROCESSING, "lease_expires_at": {"$in": expiries}, "lease_token": {"$in": tokens}},
                {"$set": lease},
                return_document=ReturnDocument.AFTER,
                maxTimeMS=_TAKE_OVER_MAX_TIME_MS,
            )
            if doc is None:
                self.answered(token)
                break
            taken.append(ClaimedJob(doc, token))
            store.log.warning("job %s: taking over the lease of a claim whose reply was lost", doc["_id"])
        self.answered(*(job.token for job in taken))  # only now: the caller gets them
        return taken
