"""The store's boundary to the jobs collection: indexes before the first use, naive UTC on every read.

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
* **Datetimes read back are naive UTC**, the form every comparison in the
  library uses, whether or not the app connected with ``tz_aware=True``.
  The collection is read through a view with ``tz_aware=False``; writes are
  unaffected (pymongo stores naive datetimes as UTC).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure

from .errors import IndexSetupError

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from .model import BaseJob

__all__ = [
    "UNIQUE_INDEXES",
    "forget_prepared",
    "forget_prepared_collections",
    "is_prepared",
    "prepared_collection",
    "unique_insert_protected",
    "verify_unique_indexes",
]

log = logging.getLogger(__name__)

#: The unique indexes the queue's guarantees rest on: name -> key.
UNIQUE_INDEXES: dict[str, list[tuple[str, int]]] = {
    "mjq_unique": [("unique_key", 1)],
    "mjq_schedule": [("schedule", 1), ("fire_time", 1)],
}

#: Guards :data:`_locks`; held only to look a model's lock up, never during I/O.
_lock = threading.Lock()
#: One lock per job model, so that a model whose database is unreachable holds
#: up only its own first use, never another model's.
_locks: dict[type[BaseJob], threading.Lock] = {}
#: Per job model, the collection object whose indexes this process created.
#: :meth:`BaseJob.drop_collection` forgets it, and MongoEngine makes a new
#: object in a forked child; either means "create them again".
_prepared: dict[type[BaseJob], Collection[dict[str, Any]]] = {}


def prepared_collection(model: type[BaseJob], *, force: bool = False) -> Collection[dict[str, Any]]:
    """The model's collection, its indexes created and checked first, read as naive UTC.

    Args:
        model: The app's job model.
        force: Create and check the indexes even if this process did already.

    Raises:
        IndexSetupError: an index could not be created, or a unique one is missing.
        PyMongoError: the server could not be reached; the next call tries again.
    """
    cached: Collection[dict[str, Any]] | None = getattr(model, "_collection", None)
    if not force and is_prepared(model):
        assert cached is not None
        raw = cached
    else:
        with _model_lock(model):  # every other thread's first use of this model waits here until the indexes exist
            # Under the lock: a model whose meta turns auto_create_index back on builds them here, not unlocked.
            raw = model._get_collection()
            if force or _prepared.get(model) is not raw:
                _create_indexes(model)
                verify_unique_indexes(model, raw)
                _prepared[model] = raw
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
    """Raise :class:`IndexSetupError` unless the unique indexes exist, unique, on their keys."""
    info = collection.index_information()
    for name, key in UNIQUE_INDEXES.items():
        found = info.get(name)
        if not _is_unique_index(found, key):
            raise IndexSetupError(
                f"collection {collection.name!r} of {model.__name__} has no unique index {name} on "
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
    if all(_is_unique_index(info.get(name), key) for name, key in UNIQUE_INDEXES.items()):
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


def _is_unique_index(found: Any, key: list[tuple[str, int]]) -> bool:
    return found is not None and bool(found.get("unique")) and [tuple(k) for k in found.get("key", ())] == key


def forget_prepared(model: type[BaseJob]) -> None:
    """The model's collection was dropped: create its indexes again before its next use."""
    _prepared.pop(model, None)


def forget_prepared_collections() -> None:
    """Start afresh in a forked child: its collections are new, and the lock may be held by a parent thread."""
    global _lock
    _lock = threading.Lock()
    _locks.clear()
    _prepared.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_prepared_collections)
