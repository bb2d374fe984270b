"""``store.keys``: the key documents that keep unique jobs and schedule fires single on a sharded collection.

MongoDB enforces a unique index on a sharded collection only if the shard
key is its prefix, so with a declared shard key (``{queue: 1, _id: 1}``) the
jobs collection's ``mjq_unique`` and ``mjq_schedule`` cannot guard anything.
In that *keyed mode* each key is a document of a small collection beside the
jobs, ``<jobs collection>_keys``, whose ``_id`` is the key itself:
``{"u": unique_key}`` or ``{"s": schedule, "t": fire_time}``. An ``_id`` is
unique on any cluster (the collection stays unsharded, or sharded on
``_id``), and the key document and its job are inserted in one transaction
(:mod:`.keyed_insert`), so a key document names a job that exists, or
existed: retention may have removed it since, and the next enqueue of the
key then releases the document.

A process in keyed mode first writes the key documents of the jobs stored
before it (:func:`backfill`), when it prepares the collection: a collection
migrated from a replica set holds keys with no document yet.

Without a declared shard key nothing here is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..model import BaseJob
from .index_specs import UNIQUE_INDEXES, declared_indexes, index_mismatch
from .shardkey import ShardKey

if TYPE_CHECKING:  # the handle builds this module's sweep: imported for the type only
    from .handle import JobStore

__all__ = [
    "BACKFILL_BATCH",
    "KEYS_SUFFIX",
    "SWEEP_AGAIN_S",
    "SWEEP_AGE",
    "SWEEP_BATCH",
    "SWEEP_BUDGET_S",
    "SWEEP_INTERVAL_S",
    "KeySweep",
    "backfill",
    "create_keyed_indexes",
    "frozen_key",
    "key_doc",
    "key_ids",
    "keyed",
    "keys_of",
    "sweep",
]

log = logging.getLogger(__name__)

#: The key collection is ``<jobs collection>_keys``.
KEYS_SUFFIX = "keys"
#: Jobs read, and key documents written, per round of the backfill.
BACKFILL_BATCH = 500
#: Key documents looked at per sweep step.
SWEEP_BATCH = 500
#: How often each worker sweeps (from its maintenance thread), and again after a full batch.
SWEEP_INTERVAL_S = 600.0
SWEEP_AGAIN_S = 5.0
#: The most one maintenance step spends on the sweep.
SWEEP_BUDGET_S = 1.0
#: Only key documents older than this are swept: their transaction committed long ago, so a job not found is gone.
SWEEP_AGE = timedelta(hours=1)

_SCHEDULE, _UNIQUE = "schedule", "unique_key"


def keyed(model: Any) -> bool:
    """Whether the model declares a shard key: its unique jobs and fires are then guarded by key documents."""
    return bool(ShardKey(model))


def create_keyed_indexes(model: type[BaseJob]) -> None:
    """``model.ensure_indexes()``, but ``mjq_unique`` and ``mjq_schedule`` not unique (kept if they already are)."""
    collection = model._get_collection()
    existing = collection.index_information()
    declared = declared_indexes(model)
    background = model._meta.get("index_background", False)
    for spec in model._meta.get("index_specs") or []:
        opts = {**(model._meta.get("index_opts") or {}), **spec}
        fields = opts.pop("fields")
        opts.pop("cls", None)
        name = opts.get("name")
        if name in UNIQUE_INDEXES:
            if index_mismatch(existing.get(name), declared[name]) is None:
                continue  # unique from a replica set's days, or not: either serves the look-ups
            opts.pop("unique", None)
        collection.create_index(fields, background=background, **opts)


def key_ids(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The keys ``doc`` must hold, as ``(kind, key document _id)``: its fire time first, then its unique key."""
    ids: list[tuple[str, dict[str, Any]]] = []
    if doc.get("schedule") is not None and doc.get("fire_time") is not None:
        ids.append((_SCHEDULE, {"s": doc["schedule"], "t": doc["fire_time"]}))
    if doc.get("unique_key") is not None:
        ids.append((_UNIQUE, {"u": doc["unique_key"]}))
    return ids


def key_doc(key_id: Mapping[str, Any], job: Mapping[str, Any], shard_key: ShardKey, now: datetime) -> dict[str, Any]:
    """The key document for ``job``: its ``_id`` and shard key values (so reading it is targeted), and when."""
    return {"_id": dict(key_id), "job": job["_id"], "where": shard_key.of(job), "at": now}


def keys_of(jobs: Collection[dict[str, Any]]) -> Collection[dict[str, Any]]:
    """The key collection beside ``jobs``, read as ``jobs`` is (naive UTC)."""
    return jobs.database.get_collection(f"{jobs.name}_{KEYS_SUFFIX}", codec_options=jobs.codec_options)


def backfill(jobs: Collection[dict[str, Any]], shard_key: ShardKey, now: datetime) -> int:
    """Write the missing key documents of the stored jobs that hold a key; how many were written.

    Runs once per process before its first keyed insert (the collection's
    preparation holds every other thread meanwhile), so a key held by a job
    inserted before keyed mode, by this process or by one still without the
    shard key, is guarded too. The holders are read in batches, through the
    sparse ``mjq_unique`` and ``mjq_schedule`` indexes; per batch one read
    finds the key documents present and one upsert (``$setOnInsert``) writes
    the others, so a concurrent insert or backfill of the same key wins and
    nothing is overwritten. Idempotent: a retry after a lost reply writes
    only what is still missing.
    """
    keys = keys_of(jobs)
    fields = {"unique_key": 1, "schedule": 1, "fire_time": 1, **dict.fromkeys(shard_key.fields, 1)}
    # Served by the sparse mjq_unique and mjq_schedule (not hinted: mongomock refuses a hint).
    holders = ({"unique_key": {"$exists": True}}, {"schedule": {"$exists": True}, "fire_time": {"$exists": True}})
    written = 0
    for filt in holders:
        for batch in _batches(jobs.find(filt, fields, batch_size=BACKFILL_BATCH)):
            wanted = {
                frozen_key(key_id): (key_id, job) for job in batch for kind, key_id in key_ids(job) if kind in filt
            }
            present = keys.find({"_id": {"$in": [key_id for key_id, _ in wanted.values()]}}, {"_id": 1})
            for doc in present:
                wanted.pop(frozen_key(doc["_id"]), None)
            if not wanted:
                continue
            news = [(key_id, key_doc(key_id, job, shard_key, now)) for key_id, job in wanted.values()]
            written += _upsert(keys, news)
    if written:
        log.info("wrote %d key document(s) for jobs stored before the shard key was declared", written)
    return written


def _upsert(keys: Collection[dict[str, Any]], docs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """Upsert key documents that never overwrite (``$setOnInsert``), in one bulk write; how many were new."""
    upserts = [UpdateOne({"_id": key_id}, {"$setOnInsert": doc}, upsert=True) for key_id, doc in docs]
    try:
        return int(keys.bulk_write(upserts, ordered=False).upserted_count)
    except BulkWriteError as exc:  # a peer's upsert of the same key came first: it is there
        if any(error.get("code") != 11000 for error in exc.details.get("writeErrors") or ()):
            raise
        return int(exc.details.get("nUpserted") or 0)
    except TypeError:  # mongomock cannot build a bulk of recent pymongo's UpdateOne: one by one
        written = 0
        for key_id, doc in docs:
            try:
                written += keys.update_one({"_id": key_id}, {"$setOnInsert": doc}, upsert=True).upserted_id is not None
            except DuplicateKeyError:
                pass
        return written


def _batches(cursor: Iterator[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for doc in cursor:
        batch.append(doc)
        if len(batch) == BACKFILL_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def frozen_key(key_id: Mapping[str, Any]) -> tuple[Any, ...]:
    """A hashable form of a key ``_id``, the same for the one read back."""
    return tuple(sorted(key_id.items()))


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
