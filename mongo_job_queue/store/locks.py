"""The MongoDB lock backend: one document per lock key in ``<jobs>_locks``, taken with one atomic update.

A lock document is ``{_id: key, holder, token, expires_at, acquired_at}``.
Taking the lock is one ``find_one_and_update`` (an upsert for a key never
seen) that matches only a free or expired document and ``$inc``\\ s its
``token``: the token is the fencing token, and since the document is never
deleted (no TTL index here, on purpose) it never goes backwards. A held
document makes the upsert collide on ``_id`` (``DuplicateKeyError``): held.
Expiry is judged by the server's clock as this process measures it
(:meth:`~mongo_job_queue.store.JobStore.now`), so every process agrees.
Writes use majority write concern (:func:`majority`): a token that only
the primary acknowledged could be rolled back by a failover and issued again.

Renewal and release filter on ``holder`` and ``token``: a holder that lost
the lock (frozen past its expiry, then taken over) matches nothing. Each
call goes through the store's retry; a retried try after a lost reply is
recognised (the acquire matches its own holder, a release reads back its
own released document). An acquire that still failed may have applied:
:meth:`MongoLocks.abandon` then frees the key by its holder id.

The collection also keeps the epochs of lock backends that can lose their
own counter (:meth:`MongoLocks.next_epoch`, used by the Redis backend).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Optional

import pymongo
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from .handle import JobStore
from .siblings import SiblingCollection

__all__ = ["ABANDON_S", "EXPIRY_INDEX", "MongoLocks"]

#: The bound on the one try that frees a key after a failed acquire, in seconds.
ABANDON_S = 2.0

#: Serves the listing of held locks by expiry (:meth:`MongoLocks.held`); built before the first write.
EXPIRY_INDEX = "mjq_locks_expiry"
#: The first use of the collection creates it with its index, one thread at a time: concurrent
#: first writes into a collection that is being created can stall some servers.
_create_lock = threading.Lock()


def majority(collection: Collection[dict[str, Any]]) -> Collection[dict[str, Any]]:
    """``collection`` writing with ``w: "majority"`` when set to less (none, 0 or 1), its ``j`` and ``wtimeout`` kept.

    A token acknowledged by the primary alone can be rolled back by a
    failover, and the next holder then gets the same token again. A tag set
    or ``w`` > 1 the application chose is kept as it is.
    """
    document = collection.write_concern.document
    w = document.get("w")
    if w is not None and not (isinstance(w, int) and w <= 1):
        return collection
    concern = WriteConcern("majority", wtimeout=document.get("wtimeout"), j=document.get("j"))
    return collection.with_options(write_concern=concern)


def _create_index(collection: Collection[dict[str, Any]]) -> None:
    collection.create_index([("expires_at", pymongo.ASCENDING)], name=EXPIRY_INDEX)


class MongoLocks:
    """The default lock backend (:class:`~mongo_job_queue.locks.LockBackend`), over the queue's store."""

    name = "mongodb"

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._locks = SiblingCollection(store, "locks", _create_index, options=majority)

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """``<jobs>_locks``, written with majority write concern unless the app asked for more."""
        return self._locks.collection

    def _ready(self) -> Collection[dict[str, Any]]:
        with _create_lock:
            return self._locks.ready()

    def acquire(self, key: str, holder: str, ttl_ms: int) -> Optional[int]:
        collection = self._ready()

        def call() -> Optional[int]:
            now = self.store.now()
            takeable = {"$or": [{"holder": None}, {"expires_at": {"$lte": now}}, {"holder": holder}]}
            update = {
                "$set": {"holder": holder, "expires_at": now + timedelta(milliseconds=ttl_ms), "acquired_at": now},
                "$inc": {"token": 1},
            }
            try:
                doc = collection.find_one_and_update(
                    {"_id": key, **takeable},
                    update,
                    upsert=True,
                    return_document=pymongo.ReturnDocument.AFTER,
                    projection={"token": 1},
                )
            except DuplicateKeyError:
                return None  # the document exists and matched nothing: held by another holder
            return None if doc is None else int(doc["token"])

        return self.store.retry(call, "lock_acquire")

    def renew(self, key: str, holder: str, token: int, ttl_ms: int) -> bool:
        collection = self._ready()

        def call() -> bool:
            now = self.store.now()
            result = collection.update_one(
                {"_id": key, "holder": holder, "token": token, "expires_at": {"$gt": now}},
                # $max: a try that timed out on the client can apply after a newer one, and must not
                # move the expiry back (another holder would take a lock this one still renews).
                {"$max": {"expires_at": now + timedelta(milliseconds=ttl_ms)}},
            )
            return result.matched_count == 1

        return self.store.retry(call, "lock_renew")

    def release(self, key: str, holder: str, token: int) -> bool:
        collection = self._ready()
        tries = 0

        def call() -> bool:
            nonlocal tries
            tries += 1
            now = self.store.now()
            result = collection.update_one(
                {"_id": key, "holder": holder, "token": token},
                {"$set": {"holder": None, "expires_at": now, "released_by": holder}},
            )
            if result.matched_count == 1:
                return True
            if tries == 1:
                return False
            # An earlier try may have applied and lost its reply: ours if nobody took the key since.
            doc = collection.find_one({"_id": key}, {"holder": 1, "token": 1, "released_by": 1})
            return doc is not None and doc.get("token") == token and doc.get("released_by") == holder

        return self.store.retry(call, "lock_release")

    def abandon(self, key: str, holder: str) -> bool:
        collection = self._ready()
        with pymongo.timeout(ABANDON_S):  # one try, bounded: the store's retries were just spent
            now = self.store.now()
            result = collection.update_one(
                {"_id": key, "holder": holder},
                {"$set": {"holder": None, "expires_at": now, "released_by": holder}},
            )
        return result.matched_count == 1

    def read(self, key: str) -> Optional[dict[str, Any]]:
        """The lock document of ``key`` as stored, or None if the key was never locked."""
        collection = self._ready()
        return self.store.retry(lambda: collection.find_one({"_id": key}), "lock_read")

    def held(self, limit: int = 100) -> list[dict[str, Any]]:
        """Lock documents held now (by expiry, soonest first), at most ``limit`` of them."""
        collection = self._ready()
        limit = max(1, min(int(limit), 1000))

        def query() -> list[dict[str, Any]]:
            now = self.store.now()
            cursor = collection.find({"expires_at": {"$gt": now}, "holder": {"$ne": None}}, limit=limit)
            return list(cursor.sort("expires_at", pymongo.ASCENDING).hint(EXPIRY_INDEX))

        return self._locks.hinted(lambda: self.store.retry(query, "locks_held"))

    def next_epoch(self, name: str) -> int:
        """Add one to the epoch counter ``name``, return it (1 the first time): for a backend whose counter may vanish.

        The document's ``_id`` is a sub-document, so it can never collide
        with a lock key (always a string). Retried like any write; a retry
        after a lost reply adds one more, which only skips an epoch.
        """
        collection = self._ready()

        def call() -> int:
            for _ in range(10):
                try:
                    doc: Optional[Mapping[str, Any]] = collection.find_one_and_update(
                        {"_id": {"epoch": name}},
                        {"$inc": {"epoch": 1}},
                        upsert=True,
                        return_document=pymongo.ReturnDocument.AFTER,
                    )
                except DuplicateKeyError:
                    continue  # a concurrent first upsert won: increment the document it inserted
                if doc is not None:
                    return int(doc["epoch"])
            raise RuntimeError(f"no epoch for {name!r}: concurrent upserts kept colliding")

        return self.store.retry(call, "lock_epoch")
