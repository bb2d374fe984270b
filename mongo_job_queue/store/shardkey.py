"""The app's shard key on its job model, and the filters that carry it so a sharded cluster can target them.

The app declares the key as MongoEngine does, ``meta = {"shard_key": ("queue",
"_id")}`` (see docs/scaling.rst for the choice). On a sharded collection
``mongos`` sends a query to the shards that own its shard key values; a
filter without them goes to every shard. So the queries about one job carry
its key values: the claim's lease (:class:`~.leases.ClaimedJob`) takes them
from the claimed document (:meth:`ShardKey.of`), and :meth:`ShardKey.scope`
adds them to a filter by ``_id`` from the documents this process claimed or
read. A filter whose jobs' values are not known here is left as it is: it
still matches the same documents, it only goes to every shard.

Without a declared key every method returns its input: nothing changes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection

from ..model import BaseJob

__all__ = ["REMEMBERED", "ShardKey"]

#: How many jobs' key values one process remembers (its running jobs and the recently finished ones).
REMEMBERED = 100_000

_MISSING = object()


class ShardKey:
    """The job model's declared shard key (stored field names) and the key values of jobs seen by this process."""

    def __init__(self, model: type[BaseJob]) -> None:
        declared = model._meta.get("shard_key") or ()
        if isinstance(declared, str):
            declared = (declared,)
        self.fields: tuple[str, ...] = tuple(_db_field(model, name) for name in declared)
        self._known: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.fields)

    @property
    def targets_claim(self) -> bool:
        """Whether the claim's filter (status, ``queue $in``, type) names the key's first field: it is targeted."""
        return bool(self.fields) and self.fields[0] == "queue"

    def of(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The key's values in ``doc`` (as a filter), remembered for :meth:`scope` of its ``_id``."""
        if not self.fields:
            return {}
        values = {}
        for field in self.fields:
            value = _get(doc, field)
            if value is _MISSING:
                return {}  # a partial key targets nothing better; and None would match only missing fields
            values[field] = value
        if "_id" in doc:
            with self._lock:
                self._known[doc["_id"]] = values
                self._known.move_to_end(doc["_id"])
                while len(self._known) > REMEMBERED:
                    self._known.popitem(last=False)
        return values

    def scope(self, filt: dict[str, Any], lookup: Collection[Any] | None = None) -> dict[str, Any]:
        """``filt`` (by ``_id`` or ``_id $in``) with the key values of its jobs added, when all of them are known.

        With ``lookup`` (the jobs collection), the values of a single job not
        seen here are read first, by ``_id`` (one read sent to every shard), so
        that a ``findAndModify`` by ``_id`` from an admin process is targeted.
        """
        if not self.fields or "_id" not in filt or all(field in filt for field in self.fields):
            return filt
        wanted = filt["_id"]
        by_list = isinstance(wanted, Mapping)
        if by_list and set(wanted) != {"$in"}:
            return filt  # a range or another operator on _id: leave it to the server
        ids = list(wanted["$in"]) if by_list else [wanted]
        with self._lock:
            known = [self._known.get(job_id) for job_id in ids]
        if lookup is not None and len(ids) == 1 and known[0] is None:
            doc = lookup.find_one({"_id": ids[0]}, {field: 1 for field in self.fields})
            known = [self.of(doc) or None] if doc is not None else known
        if not known or any(values is None for values in known):
            return filt
        extra: dict[str, Any] = {}
        for field in self.fields:
            if field in filt:
                continue  # _id in a key like (queue, _id): the filter's own condition stays
            distinct: list[Any] = []
            for values in known:
                assert values is not None
                if values[field] not in distinct:
                    distinct.append(values[field])
            extra[field] = {"$in": distinct} if by_list else distinct[0]
        return {**filt, **extra}


def _db_field(model: type[BaseJob], name: str) -> str:
    """The stored name of a declared field (``id`` is ``_id``); dotted paths are kept as written."""
    field = model._fields.get(name)
    return str(getattr(field, "db_field", None) or name) if field is not None else name


def _get(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value
