"""The app's shard key on its job model, and the filters that carry it so a sharded cluster can target them.

The app declares the key as MongoEngine does, ``meta = {"shard_key": ("queue",
"_id")}`` (see docs/scaling.rst for the choice). On a sharded collection
``mongos`` sends a query to the shards that own its shard key values; a
filter without them goes to every shard. So the queries about one job carry
its key values: a claim's lease (:class:`~.leases.ClaimedJob`) takes them
from the claimed document (:meth:`ShardKey.of`) and every write and read of
its worker carries them (:meth:`ShardKey.targeted`); an admin call by
``_id`` reads them first (:meth:`ShardKey.scope`). Nothing is cached: the app
may change a job's key value at any time (MongoDB allows it since 4.2), and
a remembered value would then make the filter match nothing.

Without a declared key every method returns its input: nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.collection import Collection

from ..model import BaseJob

__all__ = ["ShardKey"]

_MISSING = object()


class ShardKey:
    """The job model's declared shard key (stored field names)."""

    def __init__(self, model: type[BaseJob]) -> None:
        declared = model._meta.get("shard_key") or ()
        if isinstance(declared, str):
            declared = (declared,)
        self.fields: tuple[str, ...] = tuple(_db_field(model, name) for name in declared)

    def __bool__(self) -> bool:
        return bool(self.fields)

    @property
    def targets_claim(self) -> bool:
        """Whether the claim's filter (status, ``queue $in``, type) names the key's first field: it is targeted."""
        return bool(self.fields) and self.fields[0] == "queue"

    def of(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The key's values in ``doc`` (as a filter); empty when one is missing."""
        if not self.fields:
            return {}
        values = {}
        for field in self.fields:
            value = _get(doc, field)
            if value is _MISSING:
                return {}  # a partial key targets nothing better; and None would match only missing fields
            values[field] = value
        return values

    def targeted(self, filt: dict[str, Any], keys: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``filt`` (by ``_id $in``) with the key values ``keys`` of its jobs added; as it is if one is unknown."""
        if not self.fields or not keys or any(not values for values in keys):
            return filt
        extra: dict[str, Any] = {}
        for field in self.fields:
            if field in filt:
                continue  # _id in a key like (queue, _id): the filter's own condition stays
            distinct: list[Any] = []
            for values in keys:
                if values[field] not in distinct:
                    distinct.append(values[field])
            extra[field] = {"$in": distinct}
        return {**filt, **extra}

    def scope(self, filt: dict[str, Any], lookup: Collection[Any]) -> dict[str, Any]:
        """``filt`` (by one ``_id``) with its job's current key values, read first by ``_id`` from ``lookup``.

        The read goes to every shard, but it lets a ``findAndModify`` by
        ``_id`` from an admin process be targeted (servers before 7.1 refuse
        one without the key). A job not found is left to the server. The
        app may change the values between the read and the write: a caller
        whose keyed write matched nothing tries once more.
        """
        if not self.fields or all(field in filt for field in self.fields):
            return filt
        if "_id" not in filt or isinstance(filt["_id"], Mapping):
            return filt  # many jobs or a range: left to the server
        doc = lookup.find_one({"_id": filt["_id"]}, dict.fromkeys(self.fields, 1))
        values = self.of(doc) if doc is not None else {}
        return {**values, **filt} if values else filt


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
