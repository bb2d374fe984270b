"""``mongo-job-queue doctor``: a deployment self-check of the queue's server, collection and this host.

Each check is a small function taking a :class:`~.probe.Probe` (the queue's
store, and the server's replies read once) and returning a :class:`Check`:
pass, warn or fail, and what to do. :func:`run_checks` runs them all, so one
check that cannot answer never hides the others. Nothing here writes: the
doctor reads the collection as it is, without building its indexes first.

The checks, one module per subject: :mod:`.topology` (replica set, change
streams, oplog window, server version), :mod:`.concerns` (write and read
concerns), :mod:`.indexes` (the model's and the retention TTL indexes),
:mod:`.clock` (this host's clock offset) and :mod:`.sharding` (the shard key
against the claim).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo.errors import PyMongoError

from .checks import FAIL, PASS, WARN, Check
from .clock import check_clock
from .concerns import check_read_concern, check_write_concern
from .indexes import check_indexes, check_ttl_indexes
from .probe import Probe
from .sharding import check_shard_key
from .topology import check_change_streams, check_oplog_window, check_server_version, check_topology

__all__ = ["CHECKS", "FAIL", "PASS", "WARN", "Check", "Probe", "run_checks"]

#: Every check, in the order they print.
CHECKS: Sequence[tuple[str, Callable[[Probe], Check]]] = (
    ("topology", check_topology),
    ("server version", check_server_version),
    ("write concern", check_write_concern),
    ("read concern", check_read_concern),
    ("indexes", check_indexes),
    ("ttl indexes", check_ttl_indexes),
    ("clock offset", check_clock),
    ("change streams", check_change_streams),
    ("shard key", check_shard_key),
    ("oplog window", check_oplog_window),
)


def run_checks(queue: Any, timeout_s: float | None = None) -> list[Check]:
    """Run every check on ``queue``'s store; a check that raises is a failure saying so.

    With ``timeout_s``, the server is pinged first within it, and an
    unreachable one raises pymongo's error instead (the CLI's exit 4).
    """
    probe = Probe(queue.store)
    if timeout_s is not None:
        probe.ping(timeout_s)
    results = []
    for name, check in CHECKS:
        try:
            results.append(check(probe))
        except PyMongoError as exc:
            results.append(Check(name, FAIL, f"the server refused or did not answer: {exc}", "check the connection"))
    return results
