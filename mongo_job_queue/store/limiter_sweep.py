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

One ``delete_many`` whose filter states all three is the whole deletion:
the server checks the filter of each document as it deletes it, so an
admission racing the sweep is never lost. A ``$push`` (or a rate's
compare-and-set, a turn's ``$max``) that lands first makes the document
fail the filter and it stays; one that comes after finds no document and
upserts a fresh one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection

from . import holders

__all__ = ["FAIR_MEMORY", "SWEEP_INTERVAL_S", "idle", "sweep"]

#: How long a fair limit's key keeps its place in the round after it was last served.
FAIR_MEMORY = timedelta(hours=1)
#: How often each worker sweeps (from its maintenance thread).
SWEEP_INTERVAL_S = 600.0
#: The most limiter documents with lapsed holders one sweep looks at.
_LAPSED_BATCH = 100


def idle(now: datetime) -> dict[str, Any]:
    """The filter of the limiter documents a fresh one would replace at ``now`` (see the module's docstring)."""
    return {
        "holders.0": {"$exists": False},
        "$and": [
            {"$or": [{"tat": None}, {"tat": {"$lte": now}}]},
            {"$or": [{"served_at": None}, {"served_at": {"$lt": now - FAIR_MEMORY}}]},
        ],
    }


def sweep(limiters: Collection[dict[str, Any]], jobs: Collection[dict[str, Any]], now: datetime) -> int:
    """Drop the gone holders of lapsed limiters, then delete the idle ones in one conditional write; how many."""
    lapsed = {"$or": [{"holders.until": {"$lt": now}}, {"holders": {"$elemMatch": {"until": None}}}]}
    for doc in limiters.find(lapsed, limit=_LAPSED_BATCH):
        holders.drop_gone(limiters, jobs, doc, now)
    return int(limiters.delete_many(idle(now)).deleted_count)
