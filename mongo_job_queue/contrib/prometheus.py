"""Prometheus metrics: a lifecycle middleware and a scrape-time queue depth collector.

::

    from mongo_job_queue.contrib import prometheus

    prometheus.instrument(queue)             # middleware + depth collector on REGISTRY
    prometheus.start_http_server(9100)       # or mount prometheus.make_wsgi_app()

Two sources, because they answer different questions. The middleware counts
what *this process* did (enqueues, handler runs by outcome, retries, lease
losses, rescues, durations, waits, jobs in progress); Prometheus sums it over
processes. The :class:`QueueStatsCollector` reads how many jobs *the
database* holds per queue and status when Prometheus scrapes: one
aggregation over the unfinished jobs' claim index keys, one read of the pause
state and a best-effort count of the retained finished jobs, however many
queues there are, each bounded by ``maxTimeMS`` and cached, so the figure is
right however many workers run and a scrape storm costs MongoDB one round
per ``cache_seconds``.

Every metric is named ``mongo_job_queue_*`` in base units (seconds), counters
end in ``_total``, and labels are low-cardinality only: ``queue``,
``job_type`` and an ``outcome`` or ``status`` from a fixed set. Never a job
id. Queue names and job types are free-form, so each label keeps at most
``max_label_values`` (default :data:`MAX_LABEL_VALUES`) distinct values; the
others are counted under :data:`OTHER`.

Pass a :class:`prometheus_client.CollectorRegistry` to isolate (tests, apps
with several registries); the default is ``prometheus_client.REGISTRY``.

Under gunicorn's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before
the app starts) counters and histograms are summed across workers and the
in-progress gauge uses ``livesum``; the depth collector is not a file-backed
metric, so register it once, in the registry that serves ``/metrics``:
:func:`make_wsgi_app` with ``queue=`` does that.
"""

from __future__ import annotations

try:
    import prometheus_client
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "mongo_job_queue.contrib.prometheus needs prometheus_client: pip install 'mongo-job-queue[prometheus]'"
    ) from exc

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

import pymongo

from ..middleware import Middleware, Outcome
from ..status import ALL_STATUSES, FINISHED, PENDING, PROCESSING, UNFINISHED

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_LABEL_VALUES",
    "OTHER",
    "PREFIX",
    "PrometheusMiddleware",
    "QueueStatsCollector",
    "depth_pipeline",
    "finished_pipeline",
    "instrument",
    "make_wsgi_app",
    "multiprocess_dir",
    "read_depth",
    "start_http_server",
]

log = logging.getLogger(__name__)

#: The one prefix of every metric name.
PREFIX = "mongo_job_queue"

#: Histogram buckets in seconds, from 5 ms to an hour: handlers and waits range from quick to long batch work.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    float("inf"),
)

#: Distinct values a ``queue`` or ``job_type`` label takes at most, by default (per registry and process).
MAX_LABEL_VALUES = 100
#: The label value of the queues and job types beyond the cap.
OTHER = "__other__"

_JOB_LABELS = ("queue", "job_type")
_LEASE_MEMORY = 4096  # claims remembered to count each lost lease once
_STATUSES = list(ALL_STATUSES)
_UNFINISHED = list(UNFINISHED)
_FINISHED = list(FINISHED)
#: Rows of the depth aggregation's first reply: one per queue, so the read is one round trip.
_DEPTH_BATCH = 10_000


class _LabelValues:
    """Caps the distinct values of the ``queue`` and ``job_type`` labels; the later ones become :data:`OTHER`.

    Queue names come from the callers of ``enqueue``: without a cap, every
    new name would add series to this process for good.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_label_values must be >= 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._seen: tuple[set[str], set[str]] = (set(), set())

    def __call__(self, item: Any) -> tuple[str, str]:
        queue, job_type = _labels(item)
        return self._cap(self._seen[0], queue), self._cap(self._seen[1], job_type)

    def _cap(self, seen: set[str], value: str) -> str:
        if value in seen:
            return value
        with self._lock:
            if value not in seen:
                if len(seen) >= self.limit:
                    return OTHER
                seen.add(value)
        return value


@dataclass(frozen=True)
class _Metrics:
    """The metric objects of one registry, shared by every middleware that records into it."""

    buckets: tuple[float, ...]
    labels: _LabelValues
    enqueued: Counter
    finished: Counter
    retries: Counter
    lease_losses: Counter
    orphans: Counter
    duration: Histogram
    wait: Histogram
    in_progress: Gauge


_metrics_lock = threading.Lock()
_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry, buckets: Sequence[float], max_label_values: int) -> _Metrics:
    # Metric names are unique per registry, so two queues (or two middleware
    # objects) recording into one registry must share the metric objects.
    wanted = tuple(float(b) for b in buckets)
    with _metrics_lock:
        found = _metrics_by_registry.get(registry)
        if found is not None:
            if found.buckets != wanted:
                raise ValueError(
                    f"the {PREFIX} metrics of this registry already use buckets {found.buckets}, not {wanted}"
                )
            if found.labels.limit != max_label_values:
                raise ValueError(
                    f"the {PREFIX} metrics of this registry already use max_label_values={found.labels.limit}"
                )
            return found

        def job_counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, (*_JOB_LABELS, *extra), registry=registry)

        def job_histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, _JOB_LABELS, buckets=wanted, registry=registry)

        metrics = _Metrics(
            buckets=wanted,
            labels=_LabelValues(max_label_values),
            enqueued=job_counter("jobs_enqueued_total", "Jobs inserted by this process."),
            finished=job_counter(
                "jobs_finished_total",
                "Handler runs that ended, by outcome: completed, retry (attempt failed, retry scheduled), "
                "failed (failed for good), cancelled, lease_lost or error (outcome not recorded).",
                "outcome",
            ),
            retries=job_counter("job_retries_total", "Failed attempts written back as pending with a retry delay."),
            lease_losses=job_counter(
                "lease_losses_total", "Claims whose lease this process found lost (counted once per claim)."
            ),
            orphans=job_counter(
                "orphans_recovered_total",
                "Jobs with an expired lease returned to the queue (outcome=requeued) or failed (outcome=failed).",
                "outcome",
            ),
            duration=job_histogram("job_duration_seconds", "Time a handler ran, per attempt."),
            wait=job_histogram(
                "job_wait_seconds", "Time from a job's run_at (due time) to the claim that started an attempt."
            ),
            in_progress=Gauge(
                f"{PREFIX}_jobs_in_progress",
                "Handlers running now.",
                _JOB_LABELS,
                registry=registry,
                multiprocess_mode="livesum",
            ),
        )
        _metrics_by_registry[registry] = metrics
        return metrics


def _labels(item: Any) -> tuple[str, str]:
    """``(queue, job_type)`` of a raw document or a job instance."""
    if isinstance(item, dict):
        queue, job_type = item.get("queue"), item.get("type")
    else:
        queue, job_type = getattr(item, "queue", None), getattr(item, "type", None)
    return str(queue or "default"), str(job_type or "unknown")


class PrometheusMiddleware(Middleware):
    """Records the queue's lifecycle into Prometheus metrics; add it with ``create_job_queue(middleware=[...])``.

    Args:
        registry: Where the metrics are registered (default ``prometheus_client.REGISTRY``).
            Several middleware objects on one registry share its metrics.
        buckets: Histogram buckets in seconds for durations and waits.
        max_label_values: Distinct ``queue`` (and ``job_type``) label values
            this process records; the later ones are counted under :data:`OTHER`.
    """

    def __init__(
        self,
        registry: Optional[CollectorRegistry] = None,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_label_values: int = MAX_LABEL_VALUES,
    ):
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = _metrics_for(self.registry, buckets, max_label_values)
        self._labels = self.metrics.labels
        self._lock = threading.Lock()
        self._lost: OrderedDict[tuple[Any, Any], None] = OrderedDict()
        # Labels of the handlers running in each thread, innermost last: a
        # handler may run another job inline (eager mode) in the same thread.
        self._local = threading.local()

    def after_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        self.metrics.enqueued.labels(*self._labels(doc)).inc()

    def after_claim(self, queue: Any, doc: dict[str, Any]) -> None:
        run_at, started_at = doc.get("run_at"), doc.get("started_at")
        if isinstance(run_at, datetime) and isinstance(started_at, datetime):
            # An inline run of a job not yet due would be negative: it did not wait.
            wait = max(0.0, (started_at - run_at).total_seconds())
            self.metrics.wait.labels(*self._labels(doc)).observe(wait)

    def before_process(self, queue: Any, job: Any) -> None:
        labels = self._labels(job)
        stack = self._stack()
        if len(stack) >= 16:
            # after_process never came for these (an outcome write raised):
            # stop counting them as running rather than grow forever.
            for stale in stack[:-8]:
                self.metrics.in_progress.labels(*stale).dec()
            del stack[:-8]
        stack.append(labels)
        self.metrics.in_progress.labels(*labels).inc()

    def after_process(
        self, queue: Any, job: Any, *, outcome: Outcome, exc: Optional[BaseException], duration_s: float
    ) -> None:
        labels = self._labels(job)
        stack = self._stack()
        if labels in stack:
            stack.reverse()
            stack.remove(labels)  # the innermost one
            stack.reverse()
            self.metrics.in_progress.labels(*labels).dec()
        self.metrics.finished.labels(*labels, outcome).inc()
        self.metrics.duration.labels(*labels).observe(max(0.0, duration_s))

    def on_retry_scheduled(self, queue: Any, doc: dict[str, Any], *, delay_ms: int, exc: BaseException) -> None:
        self.metrics.retries.labels(*self._labels(doc)).inc()

    def on_lease_lost(self, queue: Any, doc: dict[str, Any]) -> None:
        # The heartbeat and the handler's fenced write may both notice one
        # loss; the claim (id, token) counts once.
        key = (doc.get("_id"), doc.get("lease_token"))
        with self._lock:
            if key in self._lost:
                return
            self._lost[key] = None
            if len(self._lost) > _LEASE_MEMORY:
                self._lost.popitem(last=False)
        self.metrics.lease_losses.labels(*self._labels(doc)).inc()

    def on_orphan_recovered(self, queue: Any, doc: dict[str, Any], *, failed: bool) -> None:
        self.metrics.orphans.labels(*self._labels(doc), "failed" if failed else "requeued").inc()

    def _stack(self) -> list[tuple[str, str]]:
        stack: Optional[list[tuple[str, str]]] = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack


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
    rest stands. The queues this process serves come first, then paused
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
    labels. One refresh runs at a time; concurrent scrapes wait for it and
    share its result, and a failed read is cached too, so a scrape storm
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

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading the database (registration must not need it)."""
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        """The current families, from the cache or one fresh read."""
        return self._families(self._read())

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


_collectors_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, QueueStatsCollector] = weakref.WeakKeyDictionary()


def _register_depth(
    queue: Any, registry: CollectorRegistry, cache_seconds: float, max_queues: int = MAX_LABEL_VALUES
) -> QueueStatsCollector:
    with _collectors_lock:
        found = _collectors.get(registry)
        if found is not None:
            if found.queue is not queue:
                raise ValueError(
                    "this registry already has a queue depth collector for another queue; "
                    "use one registry per job model"
                )
            return found
        collector = QueueStatsCollector(queue, cache_seconds=cache_seconds, max_queues=max_queues)
        registry.register(collector)
        _collectors[registry] = collector
        return collector


def instrument(
    queue: Any,
    registry: Optional[CollectorRegistry] = None,
    *,
    depth: bool = True,
    cache_seconds: float = 5.0,
    max_label_values: int = MAX_LABEL_VALUES,
) -> PrometheusMiddleware:
    """Add a :class:`PrometheusMiddleware` to ``queue`` and register its depth collector; idempotent.

    Args:
        queue: The :class:`~mongo_job_queue.PersistentJobQueue` to instrument.
        registry: Default ``prometheus_client.REGISTRY``.
        depth: Register the :class:`QueueStatsCollector`. Pass False in
            processes that do not serve ``/metrics`` under multiprocess mode.
        cache_seconds: How long one database read serves scrapes.
        max_label_values: Distinct ``queue`` and ``job_type`` label values
            (and queues of the depth gauges); the others add up under :data:`OTHER`.

    Returns:
        The middleware (the one already on the queue, if any, for this registry).
    """
    registry = registry if registry is not None else REGISTRY
    middleware = next(
        (m for m in queue.hooks.items if isinstance(m, PrometheusMiddleware) and m.registry is registry), None
    )
    if middleware is None:
        middleware = PrometheusMiddleware(registry, max_label_values=max_label_values)
        queue.add_middleware(middleware)
    if depth:
        _register_depth(queue, registry, cache_seconds, max_label_values)
    return middleware


def multiprocess_dir() -> Optional[str]:
    """``PROMETHEUS_MULTIPROC_DIR`` if set: metrics then live in files shared by the processes."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def make_wsgi_app(
    registry: Optional[CollectorRegistry] = None,
    *,
    queue: Any = None,
    cache_seconds: float = 5.0,
    max_queues: int = MAX_LABEL_VALUES,
) -> Callable[..., Any]:
    """A WSGI app serving the metrics, to mount at ``/metrics`` in Flask, Django or gunicorn.

    Without ``registry``: ``prometheus_client.REGISTRY``, or under
    multiprocess mode a fresh registry aggregating every process's files.
    With ``queue``: that queue's depth collector is registered in it (once).
    """
    if registry is None:
        if multiprocess_dir():
            registry = CollectorRegistry()
            aggregate: Any = MultiProcessCollector  # untyped in prometheus_client
            aggregate(registry)
        else:
            registry = REGISTRY
    if queue is not None:
        _register_depth(queue, registry, cache_seconds, max_queues)
    app: Callable[..., Any] = prometheus_client.make_wsgi_app(registry)
    return app


def start_http_server(
    port: int, addr: str = "0.0.0.0", registry: Optional[CollectorRegistry] = None
) -> tuple[Any, threading.Thread]:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port: read it from ``server.server_port``. Call
    ``server.shutdown()`` to stop.

    Returns:
        ``(server, thread)`` as returned by ``prometheus_client.start_http_server``.
    """
    server, thread = prometheus_client.start_http_server(
        port, addr=addr, registry=registry if registry is not None else REGISTRY
    )
    return server, thread
