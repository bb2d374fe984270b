"""The jobs collection's indexes: the model's present and unique where they must be, none twice, TTL as configured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..status import FINISHED
from ..store.indexes import declared_indexes, index_mismatch, retention_index_name
from .checks import FAIL, PASS, WARN, Check
from .probe import Probe

__all__ = ["check_indexes", "check_ttl_indexes"]


def _existing(probe: Probe) -> list[Mapping[str, Any]]:
    with probe.store.bounded():
        return list(probe.collection.list_indexes())


def _key(index: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(str(field), direction) for field, direction in dict(index.get("key") or {}).items()]


def check_indexes(probe: Probe) -> Check:
    """Every declared index present by its name, as declared (key, unique, sparse, partial filter); none twice.

    A missing claim or lease index makes every claim or sweep a collection
    scan; a missing unique index lets unique jobs and schedule fires run
    twice; an index of a declared name that differs makes the model's index
    creation fail, so no worker or enqueue can start (the comparison is the
    store's own, :func:`~mongo_job_queue.store.indexes.index_mismatch`). A
    duplicate costs every write twice for nothing.
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
    names = {str(ix["name"]): ix for ix in existing}
    verdicts = {
        name: index_mismatch(names.get(name), spec) for name, spec in declared_indexes(probe.store.model).items()
    }
    missing = [name for name, why in verdicts.items() if why == "missing"]
    differ = [f"{name} ({why})" for name, why in verdicts.items() if why is not None and why != "missing"]
    duplicates = [names_ for names_ in by_key.values() if len(names_) > 1]
    if differ:
        problems = [f"differs from the model: {', '.join(differ)}"] + (
            [f"missing: {', '.join(missing)}"] if missing else []
        )
        return Check(
            "indexes",
            FAIL,
            "; ".join(problems) + " (workers and enqueues refuse to start: the indexes cannot be created)",
            "drop the differing index (db.<collection>.dropIndex(name)), then run queue.ensure_indexes()",
        )
    if missing:
        return Check(
            "indexes",
            FAIL,
            f"missing: {', '.join(missing)} (claims scan the collection, or unique jobs can run twice)",
            "run queue.ensure_indexes() (a starting worker creates missing ones)",
        )
    if duplicates:
        listed = "; ".join(" and ".join(sorted(group)) for group in duplicates)
        return Check(
            "indexes",
            WARN,
            f"the same key indexed twice: {listed} (every write updates both)",
            "drop the one whose name is not the model's (db.<collection>.dropIndex(name))",
        )
    return Check("indexes", PASS, f"{len(existing)} indexes, every declared one present as declared, none duplicated")


def check_ttl_indexes(probe: Probe) -> Check:
    """The retention TTL indexes match the config, and no TTL index can remove a job that is not finished."""
    wanted = probe.store.indexes.retention_seconds()
    existing = _existing(probe)
    if not existing:  # the indexes check says so; its first use creates the configured retention
        return Check("ttl indexes", PASS, "no collection yet: its first use creates the configured retention")
    ttl = [ix for ix in existing if "expireAfterSeconds" in ix]
    ours = {retention_index_name(status): status for status in wanted}
    dangerous = [str(ix["name"]) for ix in ttl if not _only_finished(ix.get("partialFilterExpression"))]
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


def _only_finished(partial: Any) -> bool:
    """Whether a partial filter limits its index to finished jobs: status one of them, or ``$eq``/``$in`` of them."""
    status = dict(partial or {}).get("status")
    if isinstance(status, Mapping):
        if set(status) == {"$eq"}:
            status = status["$eq"]
        elif set(status) == {"$in"} and isinstance(status["$in"], list):
            return bool(status["$in"]) and all(isinstance(s, str) and s in FINISHED for s in status["$in"])
        else:
            return False
    return isinstance(status, str) and status in FINISHED


def _seconds(value: Any) -> str:
    return "no TTL" if value is None else f"{value} s"
