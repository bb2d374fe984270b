"""The paced sweep of key documents (:mod:`.keys`) whose job is gone: retention or a hand deleted it.

Without it such a document stays until its key is enqueued again, which
releases it (:mod:`.keyed_insert`); the sweep keeps the key collection from
growing with keys used once. Nothing runs without a declared shard key.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection

from .handle import JobStore
from .keys import keys_of

__all__ = ["SWEEP_AGAIN_S", "SWEEP_AGE", "SWEEP_BATCH", "SWEEP_BUDGET_S", "SWEEP_INTERVAL_S", "KeySweep", "sweep"]

#: Key documents looked at per sweep step.
SWEEP_BATCH = 500
#: How often each worker sweeps (from its maintenance thread), and again after a full batch.
SWEEP_INTERVAL_S = 600.0
SWEEP_AGAIN_S = 5.0
#: The most one maintenance step spends on the sweep.
SWEEP_BUDGET_S = 1.0
#: Only key documents older than this are swept: their transaction committed long ago, so a job not found is gone.
SWEEP_AGE = timedelta(hours=1)


def sweep(jobs: Collection[dict[str, Any]], now: datetime, after: Any = None) -> tuple[int, Any]:
    """Delete one batch of key documents whose job is gone (retention, by hand); how many, and where to go on.

    The documents are paged through in ``_id`` order from ``after``; the
    second value is the batch's last ``_id``, None after the last batch.

    Only documents older than :data:`SWEEP_AGE` are looked at: a younger one
    may belong to a transaction whose job a read outside it does not see
    yet (a sharded cluster's cross-shard commit). Each delete is conditional
    on the job the document names, so a key taken again meanwhile stays.
    Without the sweep such documents stay until the key is enqueued again,
    which releases them (:mod:`.keyed_insert`).
    """
    keys = keys_of(jobs)
    filt: dict[str, Any] = {"at": {"$lt": now - SWEEP_AGE}}
    if after is not None:
        filt["_id"] = {"$gt": after}
    docs = list(keys.find(filt, {"job": 1, "where": 1}, sort=[("_id", 1)], limit=SWEEP_BATCH))
    if not docs:
        return 0, None
    wheres = [doc.get("where") or {} for doc in docs]
    filt = {"_id": {"$in": [doc.get("job") for doc in docs]}}
    if all(wheres) and all(set(w) == set(wheres[0]) for w in wheres):
        filt.update({f: {"$in": list({repr(w[f]): w[f] for w in wheres}.values())} for f in wheres[0] if f != "_id"})
    alive = {doc["_id"] for doc in jobs.find(filt, {"_id": 1})}
    missing = [doc.get("job") for doc in docs if doc.get("job") not in alive]
    if missing and len(filt) > 1:
        # Not found under the key values the key document keeps: the app may have moved the job (a
        # shard key value changed); only a read by _id alone (to every shard) tells it is gone.
        alive |= {doc["_id"] for doc in jobs.find({"_id": {"$in": missing}}, {"_id": 1})}
    gone = [doc for doc in docs if doc.get("job") not in alive]
    deleted = 0
    for doc in gone:
        deleted += keys.delete_one({"_id": doc["_id"], "job": doc.get("job")}).deleted_count
    return deleted, docs[-1]["_id"] if len(docs) == SWEEP_BATCH else None


class KeySweep:
    """The worker's paced sweep of key documents left by jobs that are gone; nothing without a shard key."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        #: Where the paging goes on (the last ``_id`` swept); None: from the start.
        self._after: Any = None

    def run_once(self, now: datetime) -> int:
        """One batch (:func:`sweep`); how many key documents went."""
        if not self._store.shard_key:
            return 0
        deleted, self._after = self._store.retry(lambda: sweep(self._store.collection, now, self._after), "sweep_keys")
        return int(deleted)

    def step(self, now: datetime) -> float:
        """The maintenance service: batches for up to :data:`SWEEP_BUDGET_S`; the seconds until the next step."""
        if not self._store.shard_key:
            return SWEEP_INTERVAL_S
        deadline = time.monotonic() + SWEEP_BUDGET_S
        while True:
            self.run_once(now)
            if self._after is None:
                return SWEEP_INTERVAL_S
            if time.monotonic() >= deadline:
                return SWEEP_AGAIN_S
