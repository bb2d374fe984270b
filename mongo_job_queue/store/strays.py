"""Stray claims: jobs leased by a claim's write whose reply never came, found so they can be handed back.

A claim's write can apply after its client stopped waiting for it: the
try timed out while the server had the write queued, and the retry's
read-back by token found nothing yet (it then claimed another job), or
every try failed and the call gave up. The job is then ``processing`` under
a token that no run holds. Nobody renews that lease; the lease sweep takes
the job back after ``lease_ms`` with the attempt counted, so a job with
``max_retries=0`` would end ``failed`` without having run.

So a claim call that had a try with an unknown outcome leaves its token
here (:meth:`StrayClaims.watch`), with each try's lease expiry and the
jobs the call returned, each with the attempt count it returned them at.
The worker's maintenance thread asks (:meth:`StrayClaims.found`), while
any token is watched, for the other leases under those tokens, and hands
each back as a claimed job that never started: ``pending``, attempt not
counted, fenced by the token. Nothing here runs a job. A returned job is
left alone as long as its attempt count is the one returned: a late write
can lease it again only once its run has ended and it is pending again
(say, for its retry), and that lease counts one attempt more. No other
call ever uses the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..status import PROCESSING
from .handle import JobStore
from .leases import ClaimedJob

__all__ = ["StrayClaims"]

#: A token is watched this many leases long: its late write applies within a lease of being sent, or the
#: lease sweep has taken the job back by then.
_WATCH_LEASES = 2
#: Bound on the one read of a maintenance step that looks for stray claims.
_READ_MAX_TIME_MS = 5_000


@dataclass(frozen=True)
class _Watch:
    #: The jobs the call returned, by id: the attempt count each was returned at.
    held: Mapping[Any, Any]
    #: Each try's lease expiry: what a late write of the call sets, so that the read is on the lease index.
    expiries: tuple[datetime, ...]
    until: float

    def run_holds(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc``'s lease is the very one the call returned (same job, same attempt count): a run holds it."""
        return doc["_id"] in self.held and self.held[doc["_id"]] == doc.get("attempts")


class StrayClaims:
    """The tokens of this process's claims whose outcome it could not learn, and the jobs leased under them."""

    def __init__(self, store: JobStore, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._watched: dict[str, _Watch] = {}

    def __bool__(self) -> bool:
        return bool(self._watched)

    def watch(self, token: str, expiries: Iterable[datetime], held: Iterable[Mapping[str, Any]]) -> None:
        """Look out for leases under ``token`` (with one of ``expiries``) other than those of ``held`` (documents)."""
        expiries = tuple(expiries)
        if not expiries:
            return  # no try sent a write
        now = self._monotonic()
        until = now + _WATCH_LEASES * self._store.config.lease_ms / 1000
        with self._lock:
            self._prune(now)
            self._watched[token] = _Watch({d["_id"]: d.get("attempts") for d in held}, expiries, until)
        self._store.log.debug("a claim's outcome is unknown; watching its lease token %s", token)

    def found(self) -> list[ClaimedJob]:
        """The jobs leased under a watched token that no run holds, as claims to hand back; one read, one try.

        The tokens past their watch are dropped first, so the reads stop
        once none is left.
        """
        with self._lock:
            self._prune(self._monotonic())
            watched = dict(self._watched)
        if not watched:
            return []
        store = self._store
        fields = dict.fromkeys(["_id", "lease_token", "type", "queue", "attempts", *store.shard_key.fields], 1)
        expiries = sorted({at for w in watched.values() for at in w.expiries})
        filt = {"status": PROCESSING, "lease_expires_at": {"$in": expiries}, "lease_token": {"$in": list(watched)}}
        with store.tried_once():  # the next maintenance step tries again; a retry would hold up the sweeps
            docs = store.retry(
                lambda: list(store.collection.find(filt, fields, max_time_ms=_READ_MAX_TIME_MS)), "stray_claims"
            )
        strays = []
        for doc in docs:
            if watched[doc["lease_token"]].run_holds(doc):
                continue
            strays.append(ClaimedJob(doc, doc["lease_token"], key=store.shard_key.of(doc)))
        return strays

    def holds(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` is leased under a watched token and no run of this process holds it (a stray to hand back).

        The lease sweep asks before it recovers an expired lease: a late write
        that applied after its lease had already run out is this process's
        stray as much as one found in time, and must not cost an attempt.
        """
        with self._lock:
            self._prune(self._monotonic())
            watch = self._watched.get(str(doc.get("lease_token")))
        return watch is not None and doc.get("status") == PROCESSING and not watch.run_holds(doc)

    def ended(self, job_id: Any, token: str) -> None:
        """A run of a job a watched call returned is over: a later lease of it under the token is a stray.

        A hand-back (or a throttle) sets the attempt count back to the one the
        call returned, so a late write of the call that leases the job again
        would look like the returned run's own lease (attempt count and all):
        the sweep would then count an attempt that never ran.
        """
        if not self._watched:  # the hot path: no claim of this process has an unknown outcome
            return
        with self._lock:
            watch = self._watched.get(token)
            if watch is not None and job_id in watch.held:
                held = {k: v for k, v in watch.held.items() if k != job_id}
                self._watched[token] = _Watch(held, watch.expiries, watch.until)

    def _prune(self, now: float) -> None:
        for token in [t for t, w in self._watched.items() if w.until <= now]:
            del self._watched[token]

    def forget(self) -> None:
        """In a forked child: the parent watches its own claims."""
        self._lock = threading.Lock()
        self._watched = {}
