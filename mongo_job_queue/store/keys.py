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
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..model import BaseJob
from .index_specs import UNIQUE_INDEXES, declared_indexes, index_mismatch
from .shardkey import ShardKey

__all__ = [
    "BACKFILL_BATCH",
    "KEYS_SUFFIX",
    "backfill",
    "create_keyed_indexes",
    "frozen_key",
    "key_doc",
    "key_ids",
    "keyed",
    "keys_of",
]

log = logging.getLogger(__name__)

#: The key collection is ``<jobs collection>_keys``.
KEYS_SUFFIX = "keys"
#: Jobs read, and key documents written, per round of the backfill.
BACKFILL_BATCH = 500
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
            present = list(keys.find({"_id": {"$in": [key_id for key_id, _ in wanted.values()]}}, {"job": 1}))
            stale = _stale(jobs, present, wanted)
            for doc in present:
                key_id, job = wanted.pop(frozen_key(doc["_id"]))
                if doc["_id"] in stale:  # it names a job that no longer holds the key: it is this job's now
                    moved = keys.update_one(
                        {"_id": doc["_id"], "job": doc.get("job")}, {"$set": key_doc(key_id, job, shard_key, now)}
                    )
                    written += moved.modified_count
            if not wanted:
                continue
            news = [(key_id, key_doc(key_id, job, shard_key, now)) for key_id, job in wanted.values()]
            written += _upsert(keys, news)
    if written:
        log.info("wrote %d key document(s) for jobs stored before the shard key was declared", written)
    return written


def _stale(
    jobs: Collection[dict[str, Any]],
    present: Sequence[Mapping[str, Any]],
    wanted: Mapping[tuple[Any, ...], tuple[dict[str, Any], Mapping[str, Any]]],
) -> list[Any]:
    """Of the key documents ``present``, those naming another job than the holder read, which no longer holds the key.

    A process without the shard key releases a key by unsetting it on the
    finished job and inserts the next holder, leaving the key document to
    name the old job: the new holder then has none, and would not be
    guarded once the unique indexes are gone. One read by ``_id`` of the
    jobs named.
    """
    others = {
        frozen_key(doc["_id"]): doc for doc in present if doc.get("job") != wanted[frozen_key(doc["_id"])][1]["_id"]
    }
    if not others:
        return []
    fields = {"unique_key": 1, "schedule": 1, "fire_time": 1}
    named = {d["_id"]: d for d in jobs.find({"_id": {"$in": [d.get("job") for d in others.values()]}}, fields)}
    stale = []
    for key, doc in others.items():
        job = named.get(doc.get("job"))
        if job is None or not any(frozen_key(held) == key for _kind, held in key_ids(job)):
            stale.append(doc["_id"])
        else:
            log.warning("two jobs hold the key %r: %s and %s", doc["_id"], doc.get("job"), wanted[key][1]["_id"])
    return stale


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
