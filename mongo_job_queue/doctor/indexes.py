"""The jobs collection's indexes: the model's present and unique where they must be, none twice, TTL as configured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..status import FINISHED
from ..store.indexes import UNIQUE_INDEXES, retention_index_name
from .checks import FAIL, PASS, WARN, Check
from .probe import Probe

__all__ = ["check_indexes", "check_ttl_indexes", "expected_indexes"]


def expected_indexes(probe: Probe) -> dict[str, list[tuple[str, int]]]:
    """The model's declared indexes (the library's and the app's), by name: their keys."""
    wanted: dict[str, list[tuple[str, int]]] = {}
    for spec in probe.store.model._meta.get("index_specs") or []:
        key = [(str(field), direction) for field, direction in spec["fields"]]
        name = spec.get("name") or "_".join(f"{field}_{direction}" for field, direction in key)
        wanted[name] = key
    return wanted


def _existing(probe: Probe) -> list[Mapping[str, Any]]:
    with probe.store.bounded():
        return list(probe.collection.list_indexes())


def _key(index: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(str(field), direction) for field, direction in dict(index.get("key") or {}).items()]


def check_indexes(probe: Probe) -> Check:
    """Every declared index present (the unique ones unique), and no two indexes on the same key.

    A missing claim or lease index makes every claim or sweep a collection
    scan; a missing unique index lets unique jobs and schedule fires run
    twice. A duplicate costs every write twice for nothing.
    """
    existing = _existing(probe)
    if not existing:
        return Check(
            "indexes",
            WARN,
            "the jobs collection does not exist yet",
            "the first worker or enqueue creates it with its indexes; or run queue.ensure_indexes() now",
        )
    by_key: dict[str, list[str]] = {}
    for index in existing:
        signature = repr((_key(index), dict(index.get("partialFilterExpression") or {})))
        by_key.setdefault(signature, []).append(str(index["name"]))
    keys = {repr(_key(ix)) for ix in existing}
    missing = [name for name, key in expected_indexes(probe).items() if repr(key) not in keys]
    names = {ix["name"]: ix for ix in existing}
    not_unique = [name for name in UNIQUE_INDEXES if name in names and not names[name].get("unique")]
    duplicates = [names_ for names_ in by_key.values() if len(names_) > 1]
    if missing or not_unique:
        problems = []
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if not_unique:
            problems.append(f"not unique: {', '.join(not_unique)}")
        return Check(
            "indexes",
            FAIL,
            "; ".join(problems) + " (claims scan the collection, or unique jobs can run twice)",
            "run queue.ensure_indexes() (a starting worker creates missing ones; drop a wrong unique one first)",
        )
    if duplicates:
        listed = "; ".join(" and ".join(sorted(group)) for group in duplicates)
        return Check(
            "indexes",
            WARN,
            f"the same key indexed twice: {listed} (every write updates both)",
            "drop the one whose name is not the model's (db.<collection>.dropIndex(name))",
        )
    return Check("indexes", PASS, f"{len(existing)} indexes, every declared one present, none duplicated")


def check_ttl_indexes(probe: Probe) -> Check:
    """The retention TTL indexes match the config, and no TTL index can remove a job that is not finished."""
    wanted = probe.store.indexes.retention_seconds()
    existing = _existing(probe)
    ttl = [ix for ix in existing if "expireAfterSeconds" in ix]
    ours = {retention_index_name(status): status for status in wanted}
    dangerous = [
        str(ix["name"]) for ix in ttl if dict(ix.get("partialFilterExpression") or {}).get("status") not in FINISHED
    ]
    if dangerous:
        return Check(
            "ttl indexes",
            FAIL,
            f"TTL index(es) {', '.join(dangerous)} are not limited to finished jobs: they delete pending "
            "or running jobs",
            "drop them; retention is set with retention_completed_ms, retention_failed_ms, retention_cancelled_ms",
        )
    found = {str(ix["name"]): ix for ix in ttl}
    differ = []
    for name, status in ours.items():
        seconds = wanted[status]
        index = found.get(name)
        have = None if index is None else index.get("expireAfterSeconds")
        if have != seconds:
            differ.append(f"{status}: {_seconds(have)} here, {_seconds(seconds)} in the config")
    if differ:
        return Check(
            "ttl indexes",
            WARN,
            "retention differs from this config: " + "; ".join(differ),
            "the last process to start applies its retention: start one with the intended config, "
            "or call queue.ensure_indexes()",
        )
    kept = ", ".join(f"{s} {wanted[s]} s" if wanted[s] else f"{s} forever" for s in wanted)
    return Check("ttl indexes", PASS, f"retention as configured ({kept})")


def _seconds(value: Any) -> str:
    return "no TTL" if value is None else f"{value} s"
