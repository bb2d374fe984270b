"""``store.listing``: the job queries behind the command line's ``jobs list`` and bulk ``retry``.

Every query names its index (``hint``), is limited and carries ``maxTimeMS``,
so a filter too broad for a large collection costs one bounded try: it
raises :class:`JobQueryError` instead of being retried (the same query would
run out of time again). The index is the first of these that applies:

1. a filter on an app field that is the first key of one of the model's
   declared indexes: that index;
2. a status, queue or job type: the claim index (``status``, ``queue``,
   ``type``, ...), with every status when none is given, so its prefix applies;
3. otherwise (no filter, a creation time only, or an app field without an
   index): the ``_id`` index, walked newest first, the creation time as its range.

Results come newest first (by ``_id``, whose time is the creation time): on
the first two, a sort of at most ``limit`` documents in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional, TypeVar, Union

from bson import ObjectId
from mongoengine.errors import ValidationError
from mongoengine.fields import BooleanField, ListField
from pymongo.errors import ExecutionTimeout

from ..errors import MongoJobQueueError
from ..model import LIBRARY_FIELDS
from ..status import ALL_STATUSES
from .admin import CLAIM_INDEX
from .handle import JobStore

__all__ = [
    "EARLIEST_ID_TIME",
    "LATEST_ID_TIME",
    "LIST_MAX_TIME_MS",
    "MAX_IDS",
    "MAX_LIST",
    "JobQuery",
    "JobQueryError",
    "Listing",
]

#: The first and last creation times a job id can hold (its time: 4 bytes of seconds since 1970, UTC).
EARLIEST_ID_TIME = datetime(1970, 1, 1)
LATEST_ID_TIME = EARLIEST_ID_TIME + timedelta(seconds=2**32 - 1)

#: The server-side bound of each query here.
LIST_MAX_TIME_MS = 5_000
#: The most summaries one listing returns.
MAX_LIST = 1_000
#: The most ids one query returns (a bulk action's set).
MAX_IDS = 10_000
#: What a summary leaves on the server: payloads, results, histories, tracebacks.
_SUMMARY = dict.fromkeys(
    ["data", "result", "errors", "headers", "admin_marks", "lease_token", "last_error.traceback"], 0
)

T = TypeVar("T")
Hint = Union[str, list[tuple[str, int]]]


class JobQueryError(MongoJobQueueError, ValueError):
    """A job query the store refuses: a field it cannot filter on, a value the field cannot hold, or too broad."""


@dataclass(frozen=True)
class JobQuery:
    """Which jobs: every part is optional, and the parts given must all match."""

    #: In one of these statuses; any status when empty.
    statuses: tuple[str, ...] = ()
    #: In this queue, of this type.
    queue: str | None = None
    job_type: str | None = None
    #: Created at or after this time (naive UTC); one before 1970 matches every job.
    created_since: datetime | None = None
    #: The app's own fields, as stored: ``((stored name, stored value), ...)`` (see :meth:`Listing.app_field`).
    fields: tuple[tuple[str, Any], ...] = field(default=())

    def filter(self, *, all_statuses: bool) -> dict[str, Any]:
        """The MongoDB filter; ``all_statuses``: every status when none is given (the claim index's prefix)."""
        query: dict[str, Any] = {}
        if self.statuses or all_statuses:
            query["status"] = {"$in": list(self.statuses or ALL_STATUSES)}
        if self.queue is not None:
            query["queue"] = self.queue
        if self.job_type is not None:
            query["type"] = self.job_type
        if self.created_since is not None:
            # Before 1970 is every job; a job id cannot hold a time before it (nor after 2106).
            since = min(max(self.created_since, EARLIEST_ID_TIME), LATEST_ID_TIME)
            query["_id"] = {"$gte": ObjectId.from_datetime(since)}
        query.update(self.fields)
        return query


_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})


def _boolean(text: str) -> bool:
    """``text`` as a bool: MongoEngine's ``BooleanField.to_python`` is ``bool(text)``, which makes ``"false"`` True."""
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError("expected true or false (or 1/0, yes/no, on/off)")


class Listing:
    """Listings of a queue's jobs, each index-backed, limited and bounded (see the module)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def app_field(self, name: str, text: str) -> tuple[str, Any]:
        """A filter on the app's own field ``name``: its stored name, and ``text`` as that field stores it.

        Raises:
            JobQueryError: ``name`` is not a field the app's model declares, or ``text`` is no value of it.
        """
        model = self._store.model
        declared = model._fields.get(name)
        if declared is None or name in LIBRARY_FIELDS or name == "id":
            own = sorted(n for n in model._fields if n not in LIBRARY_FIELDS and n != "id")
            offered = f"its own fields are {', '.join(own)}" if own else "it declares no field of its own"
            raise JobQueryError(f"{name!r} is not a field of {model.__name__} ({offered})")
        # A list field matches a job holding the value among its elements: the element's field converts it.
        scalar = declared.field if isinstance(declared, ListField) and declared.field is not None else declared
        try:
            value = _boolean(text) if isinstance(scalar, BooleanField) else scalar.to_python(text)
            scalar.validate(value)
        except (ValidationError, ValueError, TypeError) as exc:
            raise JobQueryError(f"{text!r} is not a value of {name!r} of {model.__name__}: {exc}") from exc
        return str(declared.db_field), scalar.to_mongo(value)

    def summaries(self, query: JobQuery, limit: int = 20) -> list[dict[str, Any]]:
        """At most ``limit`` matching jobs, newest first, without their data, result and error history."""
        limit = max(1, min(int(limit), MAX_LIST))
        filt, hint = self._plan(query)
        return self._bounded(
            lambda: list(
                self._store.collection.find(
                    filt, _SUMMARY, sort=[("_id", -1)], limit=limit, max_time_ms=LIST_MAX_TIME_MS
                ).hint(hint)
            ),
            "jobs_list",
        )

    def ids(self, query: JobQuery, limit: int = MAX_IDS) -> list[ObjectId]:
        """The ids of at most ``limit`` matching jobs, newest first: the set a bulk action is confirmed for."""
        limit = max(1, min(int(limit), MAX_IDS + 1))
        filt, hint = self._plan(query)
        return self._bounded(
            lambda: [
                doc["_id"]
                for doc in self._store.collection.find(
                    filt, {"_id": 1}, sort=[("_id", -1)], limit=limit, max_time_ms=LIST_MAX_TIME_MS
                ).hint(hint)
            ],
            "jobs_ids",
        )

    def _plan(self, query: JobQuery) -> tuple[dict[str, Any], Hint]:
        """The filter and the index that answers it (see the module)."""
        for stored, _ in query.fields:
            key = self._index_led_by(stored)
            if key is not None:
                return query.filter(all_statuses=False), key
        if query.statuses or query.queue is not None or query.job_type is not None:
            return query.filter(all_statuses=True), CLAIM_INDEX
        return query.filter(all_statuses=False), [("_id", 1)]

    def _index_led_by(self, stored: str) -> Optional[list[tuple[str, int]]]:
        """The key of the model's first declared index whose first key is ``stored``, if any."""
        for spec in self._store.model._meta.get("index_specs") or []:
            keys = spec.get("fields") or []
            if keys and keys[0][0] == stored:
                return [(str(name), int(direction)) for name, direction in keys]
        return None

    def _bounded(self, fn: Callable[[], T], op: str) -> T:
        def call() -> T:
            try:
                return fn()
            except ExecutionTimeout as exc:  # not retried: the same query would run out of time again
                raise JobQueryError(
                    f"the query took longer than {LIST_MAX_TIME_MS} ms: narrow it (a status, type, queue, "
                    "creation time, or a field with an index of its own)"
                ) from exc

        return self._store.retry(call, op)
