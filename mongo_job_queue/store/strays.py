"""Stray claims: jobs leased by a claim's write whose reply never came, found so they can be handed back.

A claim's write can apply after its client stopped waiting for it: the
try timed out while the server had the write queued, and the retry's
read-back by token found nothing yet (it then claimed another job), or
every try failed and the call gave up. The job is then ``processing`` under
a token that no run holds. Nobody renews that lease; the lease sweep takes
the job back after ``lease_ms`` with the attempt counted, so a job with
``max_retries=0`` would end ``failed`` without having run.

So a claim call that had a try with an unknown outcome leaves its token
here (:meth:`StrayClaims.watch`), with the ids of the jobs the call did
return. The worker's heartbeat asks (:meth:`StrayClaims.found`), while any
token is watched, for the other jobs leased under those tokens, and hands
each back as a claimed job that never started: ``pending``, attempt not
counted, fenced by the token. Nothing here runs a job. A token is watched
only once its call has returned or raised, with the ids it returned
excluded, so a job some run holds is never handed back; and no other call
ever uses that token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..status import PROCESSING
from .handle import JobStore
from .leases import ClaimedJob

__all__ = ["StrayClaims"]

#: A token is watched this many leases long: its late write applies within a lease of being sent, or the
#: lease sweep has taken the job back by then.
_WATCH_LEASES = 2
#: Bound on the one read of a heartbeat that looks for stray claims.
_READ_MAX_TIME_MS = 5_000


@dataclass(frozen=True)
class _Watch:
    held: frozenset[Any]
    until: float


class StrayClaims:
    """The tokens of this process's claims whose outcome it could not learn, and the jobs leased under them."""

    def __init__(self, store: JobStore, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._watched: dict[str, _Watch] = {}

    def __bool__(self) -> bool:
        return bool(self._watched)

    def watch(self, token: str, held: Iterable[Any]) -> None:
        """Look out for jobs leased under ``token`` other than ``held`` (the ids its claim call returned)."""
        until = self._monotonic() + _WATCH_LEASES * self._store.config.lease_ms / 1000
        with self._lock:
            self._watched[token] = _Watch(frozenset(held), until)
        self._store.log.warning(
            "a claim's reply was lost; watching its lease token %s for jobs it leased without telling", token
        )

    def found(self) -> list[ClaimedJob]:
        """The jobs leased under a watched token that no run holds, as claims to hand back; one read.

        The tokens past their watch are dropped first, so the read stops
        once none is left.
        """
        now = self._monotonic()
        with self._lock:
            for token in [t for t, w in self._watched.items() if w.until <= now]:
                del self._watched[token]
            watched = dict(self._watched)
        if not watched:
            return []
        store = self._store
        fields = dict.fromkeys(["_id", "lease_token", "type", "queue", "attempts", *store.shard_key.fields], 1)
        docs = store.retry(
            lambda: list(
                store.collection.find(
                    {"status": PROCESSING, "lease_token": {"$in": list(watched)}},
                    fields,
                    max_time_ms=_READ_MAX_TIME_MS,
                )
            ),
            "stray_claims",
        )
        return [
            ClaimedJob(doc, doc["lease_token"], key=store.shard_key.of(doc))
            for doc in docs
            if doc["_id"] not in watched[doc["lease_token"]].held
        ]

    def forget(self) -> None:
        """In a forked child: the parent watches its own claims."""
        self._lock = threading.Lock()
        self._watched = {}
