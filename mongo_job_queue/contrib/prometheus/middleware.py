"""What this process did: a lifecycle middleware counting into the metric objects of one registry.

Counters and histograms of enqueues, handler runs by outcome, retries, lease
losses, rescues, time limits, abandoned handlers, durations and waits, and
the in-progress gauge; Prometheus
sums them over processes. Every middleware on one registry shares its
metric objects, since names are unique per registry.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ...middleware import Middleware, Outcome
from .names import MAX_LABEL_VALUES, OTHER, PREFIX

__all__ = ["DEFAULT_BUCKETS", "PrometheusMiddleware"]

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

_JOB_LABELS = ("queue", "job_type")
#: The help text of each counter and histogram (named without the prefix), as ``/metrics`` shows it.
_HELP = {
    "jobs_enqueued_total": "Jobs inserted by this process.",
    "jobs_finished_total": "Handler runs that ended, by outcome: completed, retry (attempt failed, retry scheduled), "
    "failed (failed for good), cancelled, lease_lost or error (outcome not recorded).",
    "job_retries_total": "Failed attempts written back as pending with a retry delay.",
    "lease_losses_total": "Claims whose lease this process found lost (counted once per claim).",
    "orphans_recovered_total": "Jobs with an expired lease returned to the queue (outcome=requeued) "
    "or failed (outcome=failed).",
    "time_limits_exceeded_total": "Handlers that ran past their time limit (JobTimeLimitExceeded raised in them).",
    "handlers_abandoned_total": "Handlers abandoned past their time limit and grace (their thread replaced).",
    "job_duration_seconds": "Time a handler ran, per attempt.",
    "job_wait_seconds": "Time from a job's run_at (due time) to the claim that started an attempt.",
}
_LEASE_MEMORY = 4096  # claims remembered to count each lost lease once


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
    time_limits: Counter
    abandoned: Counter
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

        def job_counter(name: str, *extra: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", _HELP[name], (*_JOB_LABELS, *extra), registry=registry)

        def job_histogram(name: str) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", _HELP[name], _JOB_LABELS, buckets=wanted, registry=registry)

        metrics = _Metrics(
            buckets=wanted,
            labels=_LabelValues(max_label_values),
            enqueued=job_counter("jobs_enqueued_total"),
            finished=job_counter("jobs_finished_total", "outcome"),
            retries=job_counter("job_retries_total"),
            lease_losses=job_counter("lease_losses_total"),
            orphans=job_counter("orphans_recovered_total", "outcome"),
            time_limits=job_counter("time_limits_exceeded_total"),
            abandoned=job_counter("handlers_abandoned_total"),
            duration=job_histogram("job_duration_seconds"),
            wait=job_histogram("job_wait_seconds"),
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

    def on_time_limit_exceeded(self, queue: Any, doc: dict[str, Any], *, limit_ms: int) -> None:
        self.metrics.time_limits.labels(*self._labels(doc)).inc()

    def on_abandoned(self, queue: Any, doc: dict[str, Any], *, limit_ms: int) -> None:
        self.metrics.abandoned.labels(*self._labels(doc)).inc()

    def _stack(self) -> list[tuple[str, str]]:
        stack: Optional[list[tuple[str, str]]] = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack
