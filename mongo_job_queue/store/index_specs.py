"""How the model declares its indexes, and how an existing index differs from the declared one of its name.

Shared by the store's index creation (:mod:`.indexes`, :mod:`.keys`) and the
doctor; pure functions on the model's meta and ``listIndexes`` output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from ..model import BaseJob

__all__ = ["UNIQUE_INDEXES", "declared_indexes", "index_mismatch"]

#: The unique indexes the queue's guarantees rest on: name -> key.
UNIQUE_INDEXES: dict[str, list[tuple[str, int]]] = {
    "mjq_unique": [("unique_key", 1)],
    "mjq_schedule": [("schedule", 1), ("fire_time", 1)],
}

#: The options of an index that a ``createIndex`` of the same name must find equal (else it is refused).
_COMPARED_OPTIONS = ("unique", "sparse", "partialFilterExpression")


def declared_indexes(model: type[BaseJob]) -> dict[str, dict[str, Any]]:
    """The model's declared indexes (the library's and the app's) by name: ``key`` and the compared options."""
    declared: dict[str, dict[str, Any]] = {}
    for spec in model._meta.get("index_specs") or []:
        key = [(str(field), direction) for field, direction in spec["fields"]]
        name = str(spec.get("name") or "_".join(f"{field}_{direction}" for field, direction in key))
        declared[name] = {"key": key, **{option: spec[option] for option in _COMPARED_OPTIONS if option in spec}}
        if name in UNIQUE_INDEXES and model._meta.get("shard_key"):
            # Keyed mode: the key documents guard; unique or not, the index serves the look-ups.
            declared[name].pop("unique", None)
            declared[name]["unique_optional"] = True
    return declared


def _stored_key(key: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A declared key as ``listIndexes`` shows it: a text index's fields become its ``_fts``/``_ftsx`` pair."""
    if not any(direction == "text" for _, direction in key):
        return list(key)
    first = next(i for i, (_, direction) in enumerate(key) if direction == "text")
    rest = [part for part in key if part[1] != "text"]
    before = [part for part in rest if key.index(part) < first]
    return [*before, ("_fts", "text"), ("_ftsx", 1), *[part for part in rest if part not in before]]


def index_mismatch(found: Optional[Mapping[str, Any]], spec: Mapping[str, Any]) -> Optional[str]:
    """How an existing index differs from the declared one of its name (:func:`declared_indexes`); None if not.

    The comparison ``createIndex`` makes: the key, then unique (unless the
    spec says ``unique_optional``, see :func:`declared_indexes`), sparse and
    the partial filter. An index of the declared name that differs makes
    the model's index creation fail, so no worker or enqueue can start.
    """
    if found is None:
        return "missing"
    raw = found.get("key") or ()
    key = [(str(field), direction) for field, direction in (raw.items() if isinstance(raw, Mapping) else raw)]
    if key != _stored_key(spec["key"]):
        return f"on {[field for field, _ in key]}, not {[field for field, _ in spec['key']]}"
    for option in _COMPARED_OPTIONS:
        if option == "unique" and spec.get("unique_optional"):
            continue
        want, have = spec.get(option), found.get(option)
        if option == "partialFilterExpression":
            want, have = dict(want or {}), dict(have or {})
        else:
            want, have = bool(want), bool(have)
        if want != have:
            return f"{option} {have!r} here, {want!r} declared"
    return None
