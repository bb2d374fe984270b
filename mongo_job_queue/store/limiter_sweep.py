"""The sweep of idle limiter documents: without it one per (limit, key value) would stay forever.

A mutex key per invoice leaves one limiter document per invoice. A document
can go once a fresh one, upserted by the next admission, would behave the
same:

* it lists no holder (lapsed holders whose runs can no longer write are
  pulled first, as a full limiter's are, see :func:`.holders.drop_gone`);
* its rate state gives nothing: ``tat`` absent or passed (the next start is
  then ``now``, as on a fresh document, with the whole burst);
* for a fair limit, it was last served over :data:`FAIR_MEMORY` ago: a key
  never served sorts first (:meth:`.limiter.Limiter.turns`), and one not
  served for that long sorted before every recently served key already.

Each deletion is a ``delete_many`` whose filter states all three (beside
the ``_id`` of a batch read just before): the server checks the filter of
each document as it deletes it, so an admission racing the sweep is never
lost. A ``$push`` (or a rate's
compare-and-set, a turn's ``$max``) that lands first makes the document
fail the filter and it stays; one that comes after finds no document and
upserts a fresh one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Optional

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from . import holders

__all__ = ["FAIR_MEMORY", "SWEEP_AGAIN_S", "SWEEP_BUDGET_S", "SWEEP_INTERVAL_S", "Sweep", "idle"]

#: How long a fair limit's key keeps its place in the round after it was last served.
FAIR_MEMORY = timedelta(hours=1)
#: How often each worker sweeps (from its maintenance thread).
SWEEP_INTERVAL_S = 600.0
#: The most one maintenance step spends on the sweep: the lease rescue shares its thread, and stop() waits for it.
SWEEP_BUDGET_S = 1.0
#: When a step that ran out of budget with work left is due again.
SWEEP_AGAIN_S = 5.0
#: Limiter documents with lapsed holders looked at per read, and idle ones deleted per write.
_LAPSED_BATCH = 100
_DELETE_BATCH = 500
_MIN_DELETE_BATCH = 10


def idle(now: datetime) -> dict[str, Any]:
    """The filter of the limiter documents a fresh one would replace at ``now`` (see the module's docstring)."""
    return {
        "holders.0": {"$exists": False},
        "$and": [
            {"$or": [{"tat": None}, {"tat": {"$lte": now}}]},
            {"$or": [{"served_at": None}, {"served_at": {"$lt": now - FAIR_MEMORY}}]},
        ],
    }


def _lapsed(now: datetime) -> dict[str, Any]:
    return {"$or": [{"holders.until": {"$lt": now}}, {"holders": {"$elemMatch": {"until": None}}}]}


class Sweep:
    """One worker's sweep, in batches of a bounded size (each its own database call), resumable across steps.

    A backlog of idle documents (one per invoice id, kept for years) is
    cleared a batch at a time, never by one unbounded call that times out
    every try; the lapsed holders are paged through by ``_id``, so holders
    that still run never hide the ones behind them.
    """

    def __init__(
        self, limiters: Callable[[], Collection[dict[str, Any]]], jobs: Callable[[], Collection[dict[str, Any]]]
    ):
        self._limiters = limiters
        self._jobs = jobs
        #: Where the paging through lapsed holders goes on (the last ``_id`` read); None: from the start.
        self._after: Optional[str] = None
        self._dropping = True
        #: Idle documents deleted per write: halved after a write that ran out of time (a slow server, a large
        #: backlog), doubled back after one that did not, so that a batch always fits the call's bound.
        self._batch = _DELETE_BATCH

    def run(self, now: datetime, retry: Callable[[Callable[[], Any], str], Any], deadline: float) -> tuple[int, bool]:
        """Sweep until done or past ``deadline`` (monotonic), one batch at least: how many went, and if work is left."""
        deleted = 0
        while True:
            if self._dropping:
                self._after = retry(lambda: self._drop_page(now), "sweep_limiter_holders")
                self._dropping = self._after is not None
            else:
                gone, more = retry(lambda: self._delete_batch(now), "sweep_limiters")
                deleted += gone
                if not more:
                    self._dropping = True  # the next pass starts from the lapsed holders again
                    return deleted, False
            if time.monotonic() >= deadline:
                return deleted, True

    def _drop_page(self, now: datetime) -> Optional[str]:
        """Drop the gone holders of one page of lapsed limiters; the page's last ``_id``, None after the last page."""
        query = _lapsed(now)
        if self._after is not None:
            query = {"$and": [query, {"_id": {"$gt": self._after}}]}
        docs = list(self._limiters().find(query, sort=[("_id", 1)], limit=_LAPSED_BATCH))
        for doc in docs:
            holders.drop_gone(self._limiters(), self._jobs(), doc, now)
        return str(docs[-1]["_id"]) if len(docs) == _LAPSED_BATCH else None

    def _delete_batch(self, now: datetime) -> tuple[int, bool]:
        """Delete up to one batch of idle documents, each checked again by the delete's own filter."""
        limiters = self._limiters()
        batch = self._batch
        ids = [d["_id"] for d in limiters.find(idle(now), {"_id": 1}, limit=batch)]
        if not ids:
            return 0, False
        try:
            deleted = limiters.delete_many({"$and": [{"_id": {"$in": ids}}, idle(now)]}).deleted_count
        except PyMongoError as exc:
            if exc.timeout:  # the retry sends a smaller batch (what this one deleted before it ran out stays deleted)
                self._batch = max(_MIN_DELETE_BATCH, batch // 2)
            raise
        self._batch = min(_DELETE_BATCH, batch * 2)
        return int(deleted), len(ids) == batch
