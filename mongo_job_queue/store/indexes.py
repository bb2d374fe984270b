"""The jobs collection's indexes: the model's, before the first use, and one TTL index per finished status.

Two things must hold for every query the store makes, so they are done in
the one place every query goes through, :func:`prepared_collection`:

* **The indexes exist before the first write.** The unique indexes are what
  make ``unique_key`` and a schedule's fire time single; a job inserted
  before they exist can never be made unique again (a unique index build
  fails on the duplicates). MongoEngine's ``auto_create_index`` creates them
  lazily, on the first thread to touch the collection, while other threads
  already write. So :class:`~mongo_job_queue.BaseJob` turns it off and the
  queue creates them itself, once per process and collection, under a lock
  that every other thread waits on, and checks that the unique ones exist.
* **With a declared shard key** (keyed mode, see :mod:`.keys`) the two
  unique indexes cannot be unique on a sharded collection: they are created
  without ``unique`` (an existing unique one, from before, is kept), still
  serve the look-ups, and the key documents guard instead; those of the jobs
  stored before are written here, before the first keyed insert
  (:func:`~.keys.backfill`).
* **Datetimes read back are naive UTC**, the form every comparison in the
  library uses, whether or not the app connected with ``tz_aware=True``.
  The collection is read through a view with ``tz_aware=False``; writes are
  unaffected (pymongo stores naive datetimes as UTC).

The retention TTL indexes follow the settings of whichever process started
last; :meth:`Indexes.ensure` makes both kinds hold.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Optional

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from ..clock import utcnow
from ..errors import IndexSetupError
from ..model import BaseJob
from ..status import CANCELLED, COMPLETED, FAILED
from .handle import BUILD_WAIT_S, INDEX_BUILD_MS, JobStore
from .index_specs import UNIQUE_INDEXES, declared_indexes, index_mismatch
from .keys import backfill, create_keyed_indexes, keyed
from .shardkey import ShardKey

__all__ = [
    "UNIQUE_INDEXES",
    "Indexes",
    "declared_indexes",
    "forget_prepared",
    "forget_prepared_collections",
    "index_mismatch",
    "is_prepared",
    "prepared_collection",
    "retention_index_name",
    "unique_insert_protected",
    "verify_unique_indexes",
]

log = logging.getLogger(__name__)

_INDEX_NOT_FOUND = 27
#: How often the TTL indexes are read, changed and checked before giving up on a moving target.
_RETENTION_ROUNDS = 3

#: Guards :data:`_locks`; held only to look a model's lock up, never during I/O.
_lock = threading.Lock()
#: One lock per job model, so that a model whose database is unreachable holds
#: up only its own first use, never another model's.
_locks: dict[type[BaseJob], threading.Lock] = {}
#: Per job model, the collection object whose indexes this process created.
#: :meth:`BaseJob.drop_collection` forgets it, and MongoEngine makes a new
#: object in a forked child; either means "create them again".
_prepared: dict[type[BaseJob], Collection[dict[str, Any]]] = {}
#: The keyed models whose key documents this process, or the one it was forked from, backfilled: a forked
#: child has nothing more to backfill (the jobs stored without a key document were all there before).
_backfilled: set[type[BaseJob]] = set()


class Indexes:
    """The store's indexes: the model's (created once per process before the first use) and the TTL ones."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def collection(self, *, force: bool = False) -> Collection[dict[str, Any]]:
        """The model's collection, its indexes created and checked first (see :func:`prepared_collection`)."""
        return prepared_collection(self._store.model, force=force)

    @property
    def prepared(self) -> bool:
        """Whether this process already created the model's indexes (the next use is a plain query)."""
        return is_prepared(self._store.model)

    def ensure(self) -> None:
        """Create and check the model's indexes now, and the retention TTL indexes; idempotent.

        The model's indexes are created anyway before the store's first use
        of the collection; this does it again, e.g. after someone dropped an
        index by hand. An index build on a large existing collection takes
        longer than a query, hence the extra bound.
        """
        self._store.retry(lambda: self.collection(force=True), "ensure_indexes", extra_ms=INDEX_BUILD_MS)
        self.ensure_retention()

    def protect_unique_insert(self, doc_id: Any) -> bool:
        """After an insert that a unique index guards: whether the index held (see :func:`unique_insert_protected`)."""
        return unique_insert_protected(self._store.model, self._store.collection, doc_id)

    # -- retention ----------------------------------------------------------

    def retention_seconds(self) -> dict[str, Optional[int]]:
        """The TTL per finished status, in whole seconds (rounded up), or None to keep forever."""
        config = self._store.config
        settings = {
            COMPLETED: config.retention_completed_ms,
            FAILED: config.retention_failed_ms,
            CANCELLED: config.retention_cancelled_ms,
        }
        return {status: None if ms is None else -(-ms // 1000) for status, ms in settings.items()}

    def ensure_retention(self) -> None:
        """Make the per-status TTL indexes match the retention settings.

        One partial TTL index per finished status on ``finished_at``, named by
        status, so unfinished jobs (which the filter never matches) are never
        removed. A changed setting is applied with ``collMod`` (or a drop and
        create where the server refuses it); a setting of None drops the index.

        Peers starting at the same moment make the same changes: an index a
        peer dropped first, or created first, is this call's work done, and
        the result is checked by reading the indexes again (a few rounds, so
        a peer's change in between is seen).
        """
        wanted = self.retention_seconds()

        def call() -> list[str]:
            existing = {ix["name"]: ix for ix in self._store.collection.list_indexes()}
            for status, seconds in wanted.items():
                self._apply_retention(status, seconds, existing.get(retention_index_name(status)))
            existing = {ix["name"]: ix for ix in self._store.collection.list_indexes()}
            differ = []
            for status, seconds in wanted.items():
                index = existing.get(retention_index_name(status))
                if (index is not None) if seconds is None else not _ttl_index_is(index, status, seconds):
                    differ.append(status)
            return differ

        for _ in range(_RETENTION_ROUNDS):
            differ = self._store.retry(call, "ensure_retention_indexes", extra_ms=INDEX_BUILD_MS)
            if not differ:
                return
        self._store.log.warning(
            "TTL indexes for %s jobs differ from this process's retention settings: another process "
            "with other settings changed them meanwhile (the last to start decides)",
            ", ".join(differ),
        )

    def retention_indexes(self) -> dict[str, dict[str, Any]]:
        """The TTL indexes on the jobs collection by name, as the server reports them."""
        return {
            ix["name"]: dict(ix)
            for ix in self._store.retry(lambda: list(self._store.collection.list_indexes()), "list_indexes")
            if "expireAfterSeconds" in ix
        }

    def _apply_retention(self, status: str, seconds: Optional[int], index: Optional[Mapping[str, Any]]) -> None:
        name = retention_index_name(status)
        if seconds is None:
            if index is not None:
                self._drop_index(name)
                self._store.log.info("retention of %s jobs off: dropped TTL index %s", status, name)
            return
        if index is None:
            self._create_ttl_index(status, seconds)
            return
        if _ttl_index_is(index, status, seconds):
            return
        self._store.log.info(
            "retention of %s jobs changed from %s s to %s s: updating TTL index %s",
            status,
            index.get("expireAfterSeconds"),
            seconds,
            name,
        )
        if _ttl_index_is(index, status, None) and "expireAfterSeconds" in index:
            collection = self._store.collection
            try:
                collection.database.command(
                    {"collMod": collection.name, "index": {"name": name, "expireAfterSeconds": seconds}}
                )
                return
            except (OperationFailure, TypeError, NotImplementedError) as exc:
                if isinstance(exc, OperationFailure) and exc.code == _INDEX_NOT_FOUND:
                    pass  # a peer dropped it to recreate it: create ours (or find theirs)
                else:
                    self._store.log.debug("collMod refused (%r); recreating %s", exc, name)
        self._drop_index(name)
        self._create_ttl_index(status, seconds)

    def _drop_index(self, name: str) -> None:
        try:
            self._store.collection.drop_index(name)
        except OperationFailure as exc:
            if exc.code != _INDEX_NOT_FOUND:
                raise  # else a peer dropped it first: the same outcome

    def _create_ttl_index(self, status: str, seconds: int) -> None:
        try:
            self._store.collection.create_index(
                [("finished_at", 1)],
                name=retention_index_name(status),
                expireAfterSeconds=seconds,
                partialFilterExpression={"status": status},
            )
        except OperationFailure as exc:
            # A peer created it first (IndexOptionsConflict, IndexKeySpecsConflict):
            # the caller reads the indexes again and checks what holds.
            if exc.code not in (85, 86):
                raise


def retention_index_name(status: str) -> str:
    """The name of the TTL index that removes finished jobs of ``status``."""
    return f"mjq_ttl_{status}"


def _ttl_index_is(index: Optional[Mapping[str, Any]], status: str, seconds: Optional[int]) -> bool:
    """Whether ``index`` has the shape of the TTL index of ``status``, and expires after ``seconds`` (None: any)."""
    if index is None:
        return False
    same_shape = dict(index.get("key", {})) == {"finished_at": 1} and dict(
        index.get("partialFilterExpression") or {}
    ) == {"status": status}
    return same_shape and (seconds is None or index.get("expireAfterSeconds") == seconds)


# -- the model's indexes, once per process and model -------------------------


def prepared_collection(model: type[BaseJob], *, force: bool = False) -> Collection[dict[str, Any]]:
    """The model's collection, its indexes created and checked first, read as naive UTC.

    Args:
        model: The app's job model.
        force: Create and check the indexes even if this process did already.

    Raises:
        IndexSetupError: an index could not be created, or a unique one is missing, or another
            thread's build held this one up for over :data:`BUILD_WAIT_S`.
        PyMongoError: the server could not be reached; the next call tries again.
    """
    cached: Collection[dict[str, Any]] | None = getattr(model, "_collection", None)
    if not force and is_prepared(model):
        assert cached is not None
        raw = cached
    else:
        lock = _model_lock(model)  # every other thread's first use of this model waits here until the indexes exist
        if not lock.acquire(timeout=BUILD_WAIT_S):
            raise IndexSetupError(
                f"{model.__name__}: another thread of this process has been creating its indexes for over "
                f"{BUILD_WAIT_S:g} s; the next call tries again"
            )
        try:
            # Under the lock: a model whose meta turns auto_create_index back on builds them here, not unlocked.
            raw = model._get_collection()
            if force or _prepared.get(model) is not raw:
                _create_indexes(model)
                verify_unique_indexes(model, raw)
                if keyed(model) and (force or model not in _backfilled):
                    backfill(_naive(raw), ShardKey(model), utcnow())
                    _backfilled.add(model)
                _prepared[model] = raw
        finally:
            lock.release()
    return _naive(raw)


def _naive(raw: Collection[dict[str, Any]]) -> Collection[dict[str, Any]]:
    if raw.codec_options.tz_aware:
        return raw.with_options(codec_options=raw.codec_options.with_options(tz_aware=False, tzinfo=None))
    return raw


def is_prepared(model: type[BaseJob]) -> bool:
    """Whether this process already created and checked the model's indexes (the next use is a plain query)."""
    cached = getattr(model, "_collection", None)
    return cached is not None and _prepared.get(model) is cached


def _model_lock(model: type[BaseJob]) -> threading.Lock:
    with _lock:
        return _locks.setdefault(model, threading.Lock())


def _create_indexes(model: type[BaseJob]) -> None:
    try:
        if keyed(model):
            create_keyed_indexes(model)
        else:
            model.ensure_indexes()
    except OperationFailure as exc:
        if exc.code in (11000, 85, 86):  # duplicates in the way, or an index of that name with other options
            raise IndexSetupError(
                f"cannot create the indexes of {model.__name__} on collection "
                f"{model._get_collection_name()!r}: {exc}. The queue refuses to write without them: "
                "remove the duplicate unique_key/schedule values or the conflicting index by hand."
            ) from exc
        raise


def verify_unique_indexes(model: type[BaseJob], collection: Collection[dict[str, Any]]) -> None:
    """Raise :class:`IndexSetupError` unless the unique indexes exist, unique, on their keys (in keyed mode: exist)."""
    info = collection.index_information()
    declared = declared_indexes(model)
    kind = "" if keyed(model) else "unique "
    for name, key in UNIQUE_INDEXES.items():
        found = info.get(name)
        if index_mismatch(found, declared[name]) is not None:
            raise IndexSetupError(
                f"collection {collection.name!r} of {model.__name__} has no {kind}index {name} on "
                f"{[k for k, _ in key]} (found {found!r}): unique jobs and schedule fires would not be single"
            )


def unique_insert_protected(model: type[BaseJob], collection: Collection[dict[str, Any]], doc_id: Any) -> bool:
    """After inserting a job the unique indexes must keep single: whether they do; False if it was taken out again.

    This process created the indexes once, but the collection may have been
    dropped since by someone else (mongosh, another process); the insert
    then created it again without them, silently. One ``listIndexes`` after
    each unique insert (never after an ordinary one) finds that: an index
    present now either checked the insert or was built over the stored job,
    which a build refuses if the job is a duplicate. If they are missing,
    they are created again; if that fails on duplicates, the inserted job is
    deleted, they are created without it, and False tells the caller to
    insert it again, under the index.

    Raises:
        IndexSetupError: the indexes cannot be created even without this job.
    """
    info = collection.index_information()
    declared = declared_indexes(model)
    if all(index_mismatch(info.get(name), declared[name]) is None for name in UNIQUE_INDEXES):
        return True
    log.warning(
        "collection %r of %s has lost its unique indexes (dropped outside this process?): creating them again",
        collection.name,
        model.__name__,
    )
    forget_prepared(model)
    try:
        prepared_collection(model, force=True)
        return True
    except IndexSetupError:
        collection.delete_one({"_id": doc_id})
        prepared_collection(model, force=True)
        return False


def forget_prepared(model: type[BaseJob]) -> None:
    """The model's collection was dropped: create its indexes again (and backfill) before its next use."""
    _prepared.pop(model, None)
    _backfilled.discard(model)


def forget_prepared_collections() -> None:
    """Start afresh in a forked child: its collections are new, and the lock may be held by a parent thread."""
    global _lock
    _lock = threading.Lock()
    _locks.clear()
    _prepared.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_prepared_collections)
