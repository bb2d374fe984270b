"""The storage side of a fencing token: a MongoDB write that refuses a holder older than the last writer.

A lock alone cannot keep two holders apart: a holder that pauses (GC,
SIGSTOP, a swapped-out VM) past its lease wakes up believing it still
holds it. The write must check the token instead. Each fenced document
remembers the highest token that wrote it (``fence``), and a write applies
only if its token is not older.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection

__all__ = ["fenced_filter", "fenced_update"]


def fenced_filter(
    filter: Mapping[str, Any], token: int, *, field: str = "fence", strict: bool = False
) -> dict[str, Any]:
    """``filter`` narrowed to documents whose ``field`` is absent or below ``token`` (or equal, unless ``strict``)."""
    older = {field: {"$lt" if strict else "$lte": token}}
    return {"$and": [dict(filter), {"$or": [older, {field: {"$exists": False}}]}]}


def fenced_update(
    collection: Collection[Any],
    filter: Mapping[str, Any],
    update: Mapping[str, Any],
    token: int,
    *,
    field: str = "fence",
    strict: bool = False,
) -> bool:
    """``update_one`` that applies only if no newer lease wrote the document; True if it applied.

    ``update`` is an update document (``{"$set": ...}``); ``field`` is set
    to ``token`` with it. By default the same lease may write again (its
    token equals the stored one); ``strict`` allows one write per token.
    A document that does not match ``filter`` is not written either.
    """
    changes = {op: dict(fields) for op, fields in update.items()}
    changes.setdefault("$set", {})[field] = token
    result = collection.update_one(fenced_filter(filter, token, field=field, strict=strict), changes)
    return result.matched_count == 1
