"""The shard key, declared on the model and on the cluster, against what the claim and the fenced writes send."""

from __future__ import annotations

from typing import Any

from pymongo.errors import OperationFailure

from ..store.keys import KEYS_SUFFIX
from .checks import FAIL, PASS, WARN, Check
from .probe import Probe

__all__ = ["check_shard_key"]


def _cluster_key(probe: Probe, suffix: str = "") -> dict[str, Any] | None:
    """The jobs collection's (or its sibling's) shard key as the config server has it; None when not sharded."""
    namespace = f"{probe.database.name}.{probe.collection.name}{suffix}"
    with probe.store.bounded():
        doc = probe.database.client.get_database("config").get_collection("collections").find_one({"_id": namespace})
    if not doc or doc.get("dropped"):
        return None
    return dict(doc.get("key") or {})


def check_shard_key(probe: Probe) -> Check:
    """The claim is targeted when the key starts with ``queue``; fenced writes need the model to declare the key.

    See docs/scaling.rst: the library adds the declared key's values to every
    query about one job, and the claim names ``queue`` by ``$in``.
    """
    declared = probe.store.shard_key
    if not probe.is_sharded:
        if declared and not declared.targets_claim:
            return Check(
                "shard key",
                WARN,
                f"declared {list(declared.fields)} (the server is not sharded): sharded so, every claim would "
                "go to every shard",
                "declare ('queue', 'id') unless claims by queue are rare",
            )
        if declared:
            return Check("shard key", PASS, f"declared {list(declared.fields)}; the server is not sharded")
        return Check("shard key", PASS, "not a sharded cluster")
    try:
        actual = _cluster_key(probe)
    except OperationFailure as exc:  # a least-privilege user may not read config.collections
        return Check(
            "shard key",
            WARN,
            f"cannot tell how the jobs collection is sharded: config.collections refused ({exc.code})",
            "run the doctor as a user who may read the config database (clusterMonitor role)",
        )
    if actual is None:
        return Check("shard key", PASS, "the jobs collection is not sharded (it lives on its database's primary shard)")
    if list(actual) != list(declared.fields):
        return Check(
            "shard key",
            FAIL,
            f"the collection is sharded on {actual} but the model declares {list(declared.fields) or 'none'}: "
            "writes about one job are not targeted, and findAndModify by _id may be refused",
            f"declare meta = {{'shard_key': {tuple(actual)!r}}} on the job model",
        )
    if "hashed" in actual.values() or not declared.targets_claim:
        return Check(
            "shard key",
            WARN,
            f"sharded on {actual}: every claim goes to every shard (it filters by queue, and the key "
            "does not start with a ranged queue)",
            "shard on {queue: 1, _id: 1} so claims go only to the shards holding the worker's queues",
        )
    keys = _cluster_key(probe, f"_{KEYS_SUFFIX}")
    if keys is not None and list(keys) != ["_id"]:
        return Check(
            "shard key",
            FAIL,
            f"the key documents ({probe.collection.name}_{KEYS_SUFFIX}) are sharded on {keys}: their _id, "
            "which keeps unique jobs and schedule fires single, is unique only unsharded or sharded on _id",
            f"leave {probe.collection.name}_{KEYS_SUFFIX} unsharded (or shard it on {{_id: 1}})",
        )
    return Check(
        "shard key",
        PASS,
        f"sharded on {actual}: claims are targeted by queue; unique jobs and schedule fires are guarded by "
        f"key documents in {probe.collection.name}_{KEYS_SUFFIX} (docs/scaling.rst)",
    )
