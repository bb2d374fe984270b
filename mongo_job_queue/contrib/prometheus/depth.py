"""What the database holds: queue depth by status, read when Prometheus scrapes.

One aggregation over the unfinished jobs' claim index keys, one read of the
pause state, one of the limit definitions (and of the limiters, when there
are limits) and a best-effort count of the retained finished jobs, however
many queues there are, each bounded by ``maxTimeMS`` and cached, so the
figure is right however many workers run and a scrape storm costs MongoDB
one round per ``cache_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Optional

import pymongo
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ...status import ALL_STATUSES, FINISHED, PENDING, PROCESSING, UNFINISHED
from .names import MAX_LABEL_VALUES, OTHER, PREFIX

__all__ = ["QueueStatsCollector", "depth_pipeline", "finished_pipeline", "read_depth", "register_depth"]

log = logging.getLogger(__name__)

_STATUSES = list(ALL_STATUSES)
_UNFINISHED = list(UNFINISHED)
_FINISHED = list(FINISHED)
#: Rows of the depth aggregation's first reply: one per queue, so the read is one round trip.
_DEPTH_BATCH = 10_000


def depth_pipeline(now: datetime) -> list[dict[str, Any]]:
    """The depth aggregation: per queue, unfinished jobs by status and the oldest due pending ``run_at``.

    Over the claim index (``status, queue, type, priority, run_at``) and
    unfinished jobs only: the ``$match`` on its first field bounds the scan
    to pending and processing keys, and the ``$project`` keeps only indexed
    fields, so its cost does not grow with retained finished jobs.
    """
    due = {"$and": [{"$eq": ["$status", PENDING]}, {"$lte": ["$run_at", now]}]}
    return [
        {"$match": {"status": {"$in": _UNFINISHED}}},
        {"$project": {"_id": 0, "status": 1, "queue": 1, "run_at": 1}},
        {
            "$group": {
                "_id": {"queue": "$queue", "status": "$status"},
                "n": {"$sum": 1},
                "oldest": {"$min": {"$cond": [due, "$run_at", None]}},
            }
        },
        {
            "$group": {
                "_id": "$_id.queue",
                "counts": {"$push": {"status": "$_id.status", "n": "$n"}},
                "oldest": {"$min": "$oldest"},
            }
        },
    ]


def finished_pipeline() -> list[dict[str, Any]]:
    """Retained finished jobs per queue and status: index keys only, but as many as retention keeps."""
    return [
        {"$match": {"status": {"$in": _FINISHED}}},
        {"$project": {"_id": 0, "status": 1, "queue": 1}},
        {"$group": {"_id": {"queue": "$queue", "status": "$status"}, "n": {"$sum": 1}}},
    ]


def read_depth(
    queue: Any,
    *,
    max_queues: int = MAX_LABEL_VALUES,
    max_time_ms: int = 5_000,
    finished_time_ms: Optional[int] = None,
) -> dict[str, Any]:
    """Per queue: ``counts`` by status, ``oldest_due_age_s``, ``paused``; at most ``max_queues`` queues plus OTHER.

    Three commands whatever the number of queues: the :func:`depth_pipeline`
    aggregation over unfinished jobs (``maxTimeMS`` bounds it), the pause
    state's one document, and the :func:`finished_pipeline` count of retained
    finished jobs with its own ``finished_time_ms`` budget (default: a fifth
    of ``max_time_ms``). The finished count is best effort: when it fails or
    times out, ``counts`` lacks the finished statuses (no series) and the
    rest stands. The two counts are two reads, not one snapshot: a job that
    finishes between them shows in both once. The queues this process serves come first, then paused
    ones, then the busiest (pending and processing); the rest add up under
    :data:`OTHER`.
    """
    store = queue.store

    def aggregate() -> tuple[datetime, list[dict[str, Any]]]:
        now = store.now()
        rows = store.collection.aggregate(depth_pipeline(now), maxTimeMS=max_time_ms, batchSize=_DEPTH_BATCH)
        return now, list(rows)

    now, rows = store.retry(aggregate, "prometheus_depth")
    paused: frozenset[str] = frozenset(store.control.pause_state().queues)
    finished = _read_finished(store, finished_time_ms or max(1, max_time_ms // 5))
    known = _STATUSES if finished is not None else _UNFINISHED
    stats: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        if name not in stats:
            stats[name] = {"counts": dict.fromkeys(known, 0), "oldest_due_age_s": None}
        return stats[name]

    for row in rows:
        counts = entry(str(row["_id"]))["counts"]
        for item in row.get("counts") or ():
            if item.get("status") in _UNFINISHED:
                counts[item["status"]] += int(item.get("n") or 0)
        oldest = row.get("oldest")
        if isinstance(oldest, datetime):
            stats[str(row["_id"])]["oldest_due_age_s"] = max(0.0, (now - oldest).total_seconds())
    for (name, status), n in (finished or {}).items():
        entry(name)["counts"][status] += n
    for name in paused:
        entry(name)
    for name, item in stats.items():
        item["paused"] = name in paused
    return _cap_queues(stats, frozenset(queue.config.queues), max_queues)


def _read_finished(store: Any, max_time_ms: int) -> Optional[dict[tuple[str, str], int]]:
    """Finished jobs by (queue, status), or None (unknown) when the bounded count fails: it must not fail the rest."""
    try:
        rows = store.collection.aggregate(finished_pipeline(), maxTimeMS=max_time_ms, batchSize=_DEPTH_BATCH)
        found: dict[tuple[str, str], int] = {}
        for row in rows:
            key = row.get("_id") or {}
            if key.get("status") in _FINISHED:
                found[(str(key.get("queue")), key["status"])] = int(row.get("n") or 0)
        return found
    except Exception as exc:  # noqa: BLE001 - a timeout (retention too large for the budget) or an outage
        log.warning("finished job counts for Prometheus unknown: %r", exc)
        return None


def _cap_queues(stats: dict[str, dict[str, Any]], served: frozenset[str], limit: int) -> dict[str, dict[str, Any]]:
    if len(stats) <= limit:
        return stats

    def rank(item: tuple[str, dict[str, Any]]) -> tuple[bool, bool, int, int, str]:
        name, entry = item
        counts = entry["counts"]
        active = counts[PENDING] + counts[PROCESSING]
        return (name not in served, not entry["paused"], -active, -sum(counts.values()), name)

    ranked = sorted(stats.items(), key=rank)
    kept = dict(ranked[:limit])
    other: dict[str, Any] = {"counts": dict.fromkeys(ranked[0][1]["counts"], 0), "oldest_due_age_s": None}
    for _, entry in ranked[limit:]:
        for status, n in entry["counts"].items():
            other["counts"][status] += n
        age = entry["oldest_due_age_s"]
        if age is not None and (other["oldest_due_age_s"] is None or age > other["oldest_due_age_s"]):
            other["oldest_due_age_s"] = age
    kept[OTHER] = other  # no paused series: a mix of queues is neither
    return kept


class QueueStatsCollector:
    """Queue depth by status, read from MongoDB at scrape time, cached for ``cache_seconds``.

    Exposes ``mongo_job_queue_jobs{queue,status}``,
    ``mongo_job_queue_oldest_due_job_age_seconds{queue}``,
    ``mongo_job_queue_queue_paused{queue}`` and ``mongo_job_queue_stats_up`` (0 when the last read failed; the depth
    series are then absent rather than stale). A read is :func:`read_depth`:
    three commands whatever the number of queues, at most ``max_queues`` queue
    labels; the limits add one (two with limits defined), for
    ``mongo_job_queue_limit_running{limit}`` and ``..._limit_max_running{limit}``.
    One refresh runs at a time; concurrent scrapes wait for it and share its
    result, and a failed read is cached too, so a scrape storm
    during an outage does not pile onto the server.

    Args:
        queue: The :class:`~mongo_job_queue.PersistentJobQueue` to read.
        cache_seconds: How long one read serves scrapes.
        timeout_s: Budget of one read (pymongo client-side timeout and the
            aggregation's ``maxTimeMS``), below Prometheus's scrape timeout.
        max_queues: Queues with their own ``queue`` label; the others add up under :data:`OTHER`.
    """

    def __init__(
        self, queue: Any, *, cache_seconds: float = 5.0, timeout_s: float = 5.0, max_queues: int = MAX_LABEL_VALUES
    ) -> None:
        if max_queues < 1:
            raise ValueError(f"max_queues must be >= 1, got {max_queues}")
        self.queue = queue
        self.cache_seconds = cache_seconds
        self.timeout_s = timeout_s
        self.max_queues = max_queues
        self._lock = threading.Lock()
        self._read_at: Optional[float] = None
        self._stats: Optional[dict[str, dict[str, Any]]] = None
        self._limits: dict[str, tuple[int, Optional[int]]] = {}

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading the database (registration must not need it)."""
        return self._families(None) + _limit_families({})

    def collect(self) -> Iterable[Metric]:
        """The current families, from the cache or one fresh read."""
        stats = self._read()
        return self._families(stats) + _limit_families(self._limits)

    def _read(self) -> Optional[dict[str, dict[str, Any]]]:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.cache_seconds:
                try:
                    with pymongo.timeout(self.timeout_s):
                        self._stats = read_depth(
                            self.queue, max_queues=self.max_queues, max_time_ms=max(1, int(self.timeout_s * 1000))
                        )
                except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, it must not raise
                    log.warning("queue stats for Prometheus failed: %r", exc)
                    self._stats = None
                self._limits = _read_limits(self.queue, self.timeout_s)
                self._read_at = time.monotonic()
            return self._stats

    @staticmethod
    def _families(stats: Optional[dict[str, dict[str, Any]]]) -> list[Metric]:
        jobs = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "Jobs in the database by queue and status, read at scrape time.",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_oldest_due_job_age_seconds",
            "Age of the oldest due pending job per queue (0 when none is due): how far behind the workers are.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            f"{PREFIX}_queue_paused",
            "1 while the queue is paused (no worker claims from it), else 0.",
            labels=["queue"],
        )
        up = GaugeMetricFamily(f"{PREFIX}_stats_up", "1 if the last read of the queue stats succeeded, else 0.")
        for name, entry in sorted((stats or {}).items()):
            counts = entry.get("counts") or {}
            for status in ALL_STATUSES:
                if status in counts:  # finished statuses are absent when their bounded count failed
                    jobs.add_metric([name, status], float(counts[status]))
            oldest.add_metric([name], float(entry.get("oldest_due_age_s") or 0.0))
            if "paused" in entry:
                paused.add_metric([name], 1.0 if entry["paused"] else 0.0)
        up.add_metric([], 1.0 if stats is not None else 0.0)
        return [jobs, oldest, paused, up]


def _read_limits(queue: Any, timeout_s: float) -> dict[str, tuple[int, Optional[int]]]:
    """Per limit: running holders over all its key values, and its ``max_running``; empty when the read fails."""
    found: dict[str, tuple[int, Optional[int]]] = {}
    try:
        with pymongo.timeout(timeout_s):
            limits, rows = queue.store.limits.view()
            for limit in limits:
                found[limit.name] = (0, limit.max_running)
            for row in rows:
                running, cap = found.get(row["limit"], (0, row["max_running"]))
                found[row["limit"]] = (running + int(row["running"]), cap)
    except Exception as exc:  # noqa: BLE001 - the depth series stand without the limits
        log.warning("limits for Prometheus unknown: %r", exc)
        return {}
    return found


def _limit_families(limits: dict[str, tuple[int, Optional[int]]]) -> list[Metric]:
    """``limit_running{limit}`` and ``limit_max_running{limit}``: per limit, not per key value (cardinality)."""
    running = GaugeMetricFamily(
        f"{PREFIX}_limit_running", "Runs holding a limit now, over all its key values.", labels=["limit"]
    )
    cap = GaugeMetricFamily(
        f"{PREFIX}_limit_max_running", "The cap per key value of a concurrency limit.", labels=["limit"]
    )
    for name, (held, most) in sorted(limits.items()):
        running.add_metric([name], float(held))
        if most is not None:
            cap.add_metric([name], float(most))
    return [running, cap]


_collectors_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, QueueStatsCollector] = weakref.WeakKeyDictionary()


def register_depth(
    queue: Any, registry: CollectorRegistry, cache_seconds: float, max_queues: int = MAX_LABEL_VALUES
) -> QueueStatsCollector:
    """The depth collector of ``queue``'s collection in ``registry``: registered once per job model and registry.

    Another queue of the same model (an app factory builds one per app)
    takes the collector over, so it reads through the newest queue and does
    not keep an earlier app alive; the figures are the same collection's.

    Raises:
        ValueError: the registry already reports another job model's depth
            (the metric names are the same: one model per registry).
    """
    with _collectors_lock:
        found = _collectors.get(registry)
        if found is not None:
            if found.queue is not queue:
                if _source(found.queue) != _source(queue):
                    raise ValueError(
                        f"this registry already has the queue depth collector of {_describe(found.queue)}; "
                        f"{_describe(queue)} needs a registry of its own (registry=CollectorRegistry()), "
                        "or instrument it with depth=False"
                    )
                found.queue = queue
            return found
        collector = QueueStatsCollector(queue, cache_seconds=cache_seconds, max_queues=max_queues)
        registry.register(collector)
        _collectors[registry] = collector
        return collector


def _source(queue: Any) -> tuple[str, str]:
    """What a depth collector reads: the job model's connection alias and collection."""
    model = queue.job_model
    return (model._meta.get("db_alias") or "default", model._get_collection_name())


def _describe(queue: Any) -> str:
    alias, collection = _source(queue)
    return f"job model {queue.job_model.__name__} (collection {collection!r}, alias {alias!r})"
