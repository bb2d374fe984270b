"""The insert of a unique job or a schedule fire when the model declares a shard key (see :mod:`.keys`).

The job and its key documents are inserted in one transaction, so either
both are stored or neither: an enqueue refused (an app's unique index, an
invalid document) leaves no key behind, and a key document always names a
job that was stored with it. A key document already there decides, as the
unique index does without a shard key (:meth:`~.jobs.Jobs.insert`): its
job, if it still holds the key, is the answer and nothing is inserted;
else the key is free, its document is deleted (conditionally on the job it
names) and the insert is tried again.

Whether a key is free is read inside a transaction with snapshot read
concern, and the release is written in the same transaction: on a sharded
cluster a read outside one may see the key document of a cross-shard
transaction before its job, and take a key that is held for free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeVar

from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, OperationFailure
from pymongo.read_concern import ReadConcern

from ..errors import InvalidJobError
from ..status import FINISHED
from .faults import duplicate_field, short_error
from .handle import JobStore
from .keys import frozen_key, key_doc, key_ids, keys_of

__all__ = ["KeyedInsert"]

T = TypeVar("T")

_MAX_RELEASES = 10
#: IllegalOperation (a standalone server), OperationNotSupportedInTransaction.
_NO_TRANSACTIONS = (20, 263)

#: ``Jobs._holder``: the job holding ``doc``'s key after the jobs collection's own unique index refused it.
HolderRule = Callable[[Mapping[str, Any], str, DuplicateKeyError, bool], Optional[dict[str, Any]]]


class KeyedInsert:
    """The keyed form of the one insert path of a guarded job (see the module docstring)."""

    def __init__(self, store: JobStore, holder: HolderRule) -> None:
        self._store = store
        self._holder = holder

    def insert(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Insert ``doc`` with its key documents; None once stored, else the job that holds its place.

        Idempotent under a lost reply: a commit that applied leaves the key
        documents naming this very job, which the next try finds.
        """
        store = self._store
        keys = key_ids(doc)
        tries = 0

        def call() -> Optional[dict[str, Any]]:
            nonlocal tries
            for _ in range(_MAX_RELEASES):
                tries += 1
                try:
                    taken = self._insert_once(doc, keys)
                except DuplicateKeyError as exc:  # the jobs collection's own unique indexes
                    dup_field = duplicate_field(exc)
                    if dup_field == "_id":
                        # A job preset with this _id (a batch callback) is already stored: it holds the place.
                        here = store.collection.find_one({"_id": doc["_id"], **store.shard_key.of(doc)})
                        if here is not None:
                            return None if tries > 1 else here
                        continue
                    # A collection migrated from a replica set may keep its unique indexes, and a holder
                    # inserted by a process without the shard key has no key document: judged as before.
                    holder = self._holder(doc, dup_field, exc, tries > 1)
                    if holder is None:
                        continue
                    return None if holder["_id"] == doc["_id"] else holder
                if taken is None:
                    return None
                if tries > 1 and store.collection.find_one({**store.shard_key.of(doc), "_id": doc["_id"]}, {"_id": 1}):
                    return None  # an earlier try's commit whose reply was lost, whatever became of its key since
                holder = self._resolve(doc, *taken)
                if holder is not None:
                    return None if holder["_id"] == doc["_id"] else holder
            if "unique_key" in doc:
                raise InvalidJobError(f"unique_key {doc['unique_key']!r} is contended; try again")
            raise InvalidJobError(f"the fire time of schedule {doc.get('schedule')!r} is contended; try again")

        return store.retry(call, "insert")

    def graph_keys(self, docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The key documents of a workflow's guarded jobs, for its transaction; none without a shard key.

        Raises:
            InvalidJobError: two jobs of the workflow hold one key.
        """
        if not self._store.shard_key:
            return []
        now = self._store.now()
        found: dict[Any, dict[str, Any]] = {}
        for doc in docs:
            for _kind, key_id in key_ids(doc):
                if frozen_key(key_id) in found:
                    raise InvalidJobError(f"two jobs of the workflow hold the key {key_id!r}; nothing written")
                found[frozen_key(key_id)] = key_doc(key_id, doc, self._store.shard_key, now)
        return list(found.values())

    def release_for_graph(self, key: Mapping[str, Any]) -> None:
        """A workflow's transaction found the key document ``key`` taken: release it if free, else refuse.

        The workflow is inserted all or nothing, so a held key refuses it,
        as the unique index does without a shard key; a free one (see the
        module docstring) is released, and the caller tries again.

        Raises:
            InvalidJobError: the key is held.
        """
        kind = "schedule" if "s" in key["_id"] else "unique_key"
        holder = self._resolve(key, kind, key["_id"])  # never "mine": the key document names its job as ``job``
        if holder is not None:
            raise InvalidJobError(
                f"a job of the workflow takes the key {key['_id']!r}, held by job {holder['_id']}; nothing written"
            )

    def _insert_once(
        self, doc: dict[str, Any], keys: list[tuple[str, dict[str, Any]]]
    ) -> Optional[tuple[str, dict[str, Any]]]:
        """One transaction: the key documents, then the job; None once committed, else the key already taken."""
        jobs = self._store.collection
        docs = keys_of(jobs)
        now = self._store.now()
        taken: list[tuple[str, dict[str, Any]]] = []

        def txn(session: Optional[ClientSession]) -> None:
            taken.clear()
            for kind, key_id in keys:
                try:
                    docs.insert_one(key_doc(key_id, doc, self._store.shard_key, now), session=session)
                except DuplicateKeyError:
                    taken.append((kind, key_id))
                    raise
            jobs.insert_one(doc, session=session)

        def undo() -> None:  # without sessions: this insert's own key documents, never another's
            for _kind, key_id in keys:
                docs.delete_one({"_id": key_id, "job": doc["_id"]})

        try:
            self._transaction(txn, undo=undo)
        except DuplicateKeyError:
            if taken:
                return taken[0]
            raise
        return None

    def _resolve(self, doc: Mapping[str, Any], kind: str, key_id: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The job holding ``key_id``, or None once its document was released (it held nothing any more)."""
        store = self._store
        jobs = store.collection
        docs = keys_of(jobs)

        def txn(session: Optional[ClientSession]) -> Optional[dict[str, Any]]:
            held = docs.find_one({"_id": key_id}, session=session)
            if held is None:
                return None  # released meanwhile
            job = _read_job(jobs, held, session)
            if job is not None and job["_id"] == doc["_id"]:
                return job  # this very insert, by a try whose reply was lost
            stored = held["_id"]
            if job is not None and kind == "schedule":
                if job.get("schedule") == stored.get("s") and job.get("fire_time") == stored.get("t"):
                    return job
            elif job is not None and job.get("unique_key") == stored.get("u"):
                until = job.get("unique_until")
                finished = job.get("status") in FINISHED and (until is None or until <= store.now())
                if not finished:
                    return job
                # Released as without a shard key: the finished job no longer carries the key.
                jobs.update_one(
                    {**store.shard_key.of(job), "_id": job["_id"], "unique_key": stored["u"], "status": job["status"]},
                    {"$unset": {"unique_key": ""}},
                    session=session,
                )
            docs.delete_one({"_id": stored, "job": held.get("job")}, session=session)
            return None

        result: Optional[dict[str, Any]] = self._transaction(txn, read_concern=ReadConcern("snapshot"))
        return result

    def _transaction(
        self, txn: Callable[[Optional[ClientSession]], T], *, undo: Callable[[], object] = lambda: None, **options: Any
    ) -> T:
        """Run ``txn`` in a transaction (``with_transaction`` retries its transient errors).

        Without sessions (mongomock, which is single-threaded by contract)
        the steps run in order, and ``undo`` takes out a refused insert's
        key documents. A server without transactions (a standalone) is
        refused: keyed mode needs them.
        """
        client = self._store.collection.database.client
        try:
            session_cm = client.start_session()
        except NotImplementedError:
            try:
                return txn(None)
            except BaseException:
                undo()
                raise
        with session_cm as session:
            try:
                done: T = session.with_transaction(txn, **options)
                return done
            except OperationFailure as exc:
                if exc.code in _NO_TRANSACTIONS:
                    raise InvalidJobError(
                        "a model with a shard_key needs transactions (a replica set or a sharded cluster) for its "
                        f"unique jobs and schedule fires; nothing was written: {short_error(exc)}"
                    ) from exc
                raise


def _read_job(
    jobs: Collection[dict[str, Any]], held: Mapping[str, Any], session: Optional[ClientSession]
) -> Optional[dict[str, Any]]:
    """The job a key document names: by its ``_id`` and shard key values; by ``_id`` alone if the app moved it."""
    where = held.get("where") or {}
    job = jobs.find_one({**where, "_id": held.get("job")}, session=session)
    if job is None and where:
        job = jobs.find_one({"_id": held.get("job")}, session=session)
    return job
