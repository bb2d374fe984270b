"""Prometheus metrics: a lifecycle middleware and a scrape-time queue depth collector.

::

    from mongo_job_queue.contrib import prometheus

    prometheus.instrument(queue)             # middleware + depth collector on REGISTRY
    prometheus.start_http_server(9100)       # or mount prometheus.make_wsgi_app()

Two sources, because they answer different questions. The middleware counts
what *this process* did (enqueues, handler runs by outcome, retries, lease
losses, rescues, durations, waits, jobs in progress); Prometheus sums it over
processes (:mod:`.middleware`). The :class:`QueueStatsCollector` reads how
many jobs *the database* holds per queue and status when Prometheus scrapes,
in three bounded, cached commands however many queues there are, so the
figure is right however many workers run (:mod:`.depth`). This module ties
the two to a queue (:func:`instrument`) and serves them.

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

from ...extras import missing_extra

try:
    import prometheus_client
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_extra(__name__, "prometheus_client", "prometheus", "prometheus_client") from exc

import os
import threading
from collections.abc import Callable
from typing import Any, Optional

from .depth import QueueStatsCollector, depth_pipeline, finished_pipeline, read_depth, register_depth
from .middleware import DEFAULT_BUCKETS, PrometheusMiddleware
from .names import MAX_LABEL_VALUES, OTHER, PREFIX

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


def instrument(
    queue: Any,
    registry: Optional[CollectorRegistry] = None,
    *,
    depth: bool = True,
    cache_seconds: float = 5.0,
    max_label_values: int = MAX_LABEL_VALUES,
) -> PrometheusMiddleware:
    """Add a :class:`PrometheusMiddleware` to ``queue`` and register its depth collector; idempotent.

    Idempotent per queue and registry, and per job model for the depth
    collector: another queue of the same model (each app of an app factory)
    takes the registry's collector over. A registry reports one model's depth.

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

    Raises:
        ValueError: ``registry`` already reports another job model's depth.
    """
    registry = registry if registry is not None else REGISTRY
    middleware = next(
        (m for m in queue.hooks.items if isinstance(m, PrometheusMiddleware) and m.registry is registry), None
    )
    if middleware is None:
        middleware = PrometheusMiddleware(registry, max_label_values=max_label_values)
        queue.add_middleware(middleware)
    if depth:
        register_depth(queue, registry, cache_seconds, max_label_values)
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
        register_depth(queue, registry, cache_seconds, max_queues)
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
