"""Prometheus: a real registry scraped over HTTP while jobs run on the wire server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import mongoengine
import pytest
from helpers import wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pymongo import monitoring

from mongo_job_queue import BaseJob, FailJob, LeaseOwner, create_job_queue
from mongo_job_queue.clock import utcnow
from mongo_job_queue.contrib import prometheus
from mongo_job_queue.contrib.prometheus import (
    PrometheusMiddleware,
    QueueStatsCollector,
    depth_pipeline,
    finished_pipeline,
    instrument,
    make_wsgi_app,
    start_http_server,
)

TESTS_DIR = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``; 0 when there are none."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()  # the test's own: never the global REGISTRY


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator[Callable[[], Samples]]:
    """Serve ``registry`` on a free loopback port; scrape it over HTTP."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    yield lambda: fetch(url)
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.integration
def test_scraped_figures_match_a_run(make_queue, registry, scrape) -> None:
    queue = make_queue(concurrency=2, max_retries=1)
    instrument(queue, registry, cache_seconds=0.2)
    queue.register_handler("ok", lambda job: None)

    @queue.handler("flaky")
    def flaky(job) -> None:
        if job.attempts == 1:
            raise ConnectionError("down")

    @queue.handler("bad")
    def bad(job) -> None:
        raise FailJob("no")

    for n in range(5):
        queue.enqueue("ok", {"n": n})
    queue.enqueue("flaky", {})
    queue.enqueue("flaky", {})
    queue.enqueue("bad", {})
    queue.enqueue("ok", {}, delay_ms=3_600_000)
    queue.enqueue("ok", {}, delay_ms=3_600_000)
    assert queue.cancel_job(queue.enqueue("ok", {}, delay_ms=3_600_000).id)
    queue.enqueue("ok", {}, queue="mail")  # no worker claims from "mail": it waits
    queue.start_polling()

    def settled() -> Samples | None:
        samples = scrape()
        done = value(samples, "mongo_job_queue_jobs_finished_total") == 10
        stored = value(samples, "mongo_job_queue_jobs", status="completed") == 7
        # The depth is two reads (unfinished, then finished jobs): a read of the unfinished ones
        # taken while the last job still ran shows it processing beside the later completed count.
        depth_settled = value(samples, "mongo_job_queue_jobs", queue="default", status="processing") == 0
        idle = value(samples, "mongo_job_queue_jobs_in_progress") == 0
        return samples if done and stored and depth_settled and idle else None

    samples = wait_until(settled, timeout=60, interval=0.1, what="10 handler runs scraped")
    assert value(samples, "mongo_job_queue_jobs_enqueued_total") == 12
    assert value(samples, "mongo_job_queue_jobs_enqueued_total", queue="default", job_type="ok") == 8
    assert value(samples, "mongo_job_queue_jobs_enqueued_total", queue="mail", job_type="ok") == 1
    assert value(samples, "mongo_job_queue_jobs_finished_total", job_type="ok", outcome="completed") == 5
    assert value(samples, "mongo_job_queue_jobs_finished_total", job_type="flaky", outcome="retry") == 2
    assert value(samples, "mongo_job_queue_jobs_finished_total", job_type="flaky", outcome="completed") == 2
    assert value(samples, "mongo_job_queue_jobs_finished_total", job_type="bad", outcome="failed") == 1
    assert value(samples, "mongo_job_queue_job_retries_total") == 2
    assert value(samples, "mongo_job_queue_job_retries_total", job_type="flaky") == 2
    assert value(samples, "mongo_job_queue_lease_losses_total") == 0
    assert value(samples, "mongo_job_queue_orphans_recovered_total") == 0
    # One duration and one wait per attempt; buckets are cumulative up to +Inf.
    assert value(samples, "mongo_job_queue_job_duration_seconds_count") == 10
    assert value(samples, "mongo_job_queue_job_duration_seconds_count", job_type="flaky") == 4
    assert value(samples, "mongo_job_queue_job_duration_seconds_bucket", job_type="ok", le="+Inf") == 5
    assert value(samples, "mongo_job_queue_job_wait_seconds_count") == 10
    assert value(samples, "mongo_job_queue_job_wait_seconds_sum") >= 0
    # Depth, read from the database at scrape time.
    default = {s: value(samples, "mongo_job_queue_jobs", queue="default", status=s) for s in ("pending", "processing")}
    assert default == {"pending": 2, "processing": 0}
    assert value(samples, "mongo_job_queue_jobs", queue="default", status="failed") == 1
    assert value(samples, "mongo_job_queue_jobs", queue="default", status="cancelled") == 1
    assert value(samples, "mongo_job_queue_jobs", queue="mail", status="pending") == 1
    assert value(samples, "mongo_job_queue_oldest_due_job_age_seconds", queue="default") == 0  # none due
    assert value(samples, "mongo_job_queue_oldest_due_job_age_seconds", queue="mail") > 0
    assert value(samples, "mongo_job_queue_stats_up") == 1
    assert value(samples, "mongo_job_queue_queue_paused", queue="mail") == 0

    queue.pause(queues=["mail"])
    wait_until(
        lambda: value(scrape(), "mongo_job_queue_queue_paused", queue="mail") == 1, timeout=30, what="mail paused"
    )


@pytest.mark.integration
def test_lease_losses_and_orphans(make_queue, registry, scrape) -> None:
    queue = make_queue()
    instrument(queue, registry)
    queue.register_handler("ok", lambda job: None)
    # Two jobs whose worker died, one with an attempt left and one without.
    dead = LeaseOwner.current("dead")
    queue.enqueue("ok", {"n": 1})
    first = queue.store.jobs.claim(["ok"], ["default"], dead)
    queue.enqueue("ok", {"n": 2}, max_retries=0)
    second = queue.store.jobs.claim(["ok"], ["default"], dead)
    assert first is not None and second is not None

    sweeper = make_queue(clock=lambda: utcnow() + timedelta(minutes=5), sync_clock=False)
    sweeper.add_middleware(PrometheusMiddleware(registry))  # a second queue object, the same metrics
    assert sweeper.recover_orphans() == (1, 1)
    # The dead worker comes back: its fenced write fails; the lease keeper's notice of the same claim counts once.
    queue.worker.process(first)
    queue.hooks.emit("on_lease_lost", first.doc)

    samples = scrape()
    assert value(samples, "mongo_job_queue_orphans_recovered_total", outcome="requeued") == 1
    assert value(samples, "mongo_job_queue_orphans_recovered_total", outcome="failed") == 1
    assert value(samples, "mongo_job_queue_jobs_finished_total", outcome="lease_lost") == 1
    assert value(samples, "mongo_job_queue_lease_losses_total", queue="default", job_type="ok") == 1
    assert value(samples, "mongo_job_queue_jobs_in_progress") == 0
    assert value(samples, "mongo_job_queue_jobs", status="pending") == 1
    assert value(samples, "mongo_job_queue_jobs", status="failed") == 1


class CommandLog(monitoring.CommandListener):
    """The commands a client sent, by name, with their bodies."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("hello", "isMaster", "ismaster", "endSessions"):
            with self._lock:
                self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def names(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.commands]

    def clear(self) -> None:
        with self._lock:
            self.commands.clear()


class CountedJob(BaseJob):
    """A job model on its own client, whose commands a :class:`CommandLog` records."""

    meta = {"collection": "prometheus_jobs", "db_alias": "mjq_counted"}


@pytest.fixture
def counted(mongodb_uri, db_name) -> Iterator[tuple[Any, CommandLog]]:
    """``(queue, log)``: a queue on a fresh collection whose client logs every command it sends."""
    commands = CommandLog()
    mongoengine.register_connection(
        "mjq_counted", host=mongodb_uri, db=db_name, uuidRepresentation="standard", event_listeners=[commands]
    )
    CountedJob.drop_collection()
    CountedJob._get_db().drop_collection("prometheus_jobs_control")
    CountedJob.ensure_indexes()
    queue = create_job_queue(job_model=CountedJob, config={"queues": ["default", "mail"]})
    yield queue, commands
    queue.stop(timeout=10)
    mongoengine.disconnect(alias="mjq_counted")


def seed(queue: Any, *, queues: int, finished_per_queue: int) -> None:
    """``queues`` queues ("q000"...), each with 1 due and 1 future pending job and many retained finished ones."""
    now = queue.store.now()
    docs = []
    for q in range(queues):
        name = f"q{q:03d}"
        base = {"type": "ok", "queue": name, "priority": 0, "attempts": 0, "max_retries": 3, "created_at": now}
        docs.append({**base, "status": "pending", "run_at": now - timedelta(seconds=q + 1), "updated_at": now})
        docs.append({**base, "status": "pending", "run_at": now + timedelta(hours=1), "updated_at": now})
        for n in range(finished_per_queue):
            status = "failed" if n % 4 == 0 else "completed"
            docs.append({**base, "status": status, "run_at": now, "updated_at": now, "finished_at": now})
    queue.store.collection.insert_many(docs)


@pytest.mark.integration
def test_a_scrape_costs_three_commands_whatever_the_number_of_queues(counted, registry, scrape, raw_db) -> None:
    queue, commands = counted
    seed(queue, queues=100, finished_per_queue=4)  # 600 jobs, two thirds of them finished and retained
    queue.pause(queues=["q050", "idle"])  # a paused queue with no job is listed too
    queue.enqueue("ok", {}, queue="mail", delay_ms=60_000)  # the quietest queue, but one this process serves
    registry.register(QueueStatsCollector(queue, cache_seconds=0, max_queues=20))
    commands.clear()
    samples = scrape()
    assert sorted(commands.names()) == ["aggregate", "aggregate", "find"]  # was 2 to 6 per queue: 206 for 100 queues
    depth, finished = [c for _, c in commands.commands if _ == "aggregate"]
    assert 0 < finished["maxTimeMS"] < depth["maxTimeMS"] <= 5_000  # the finished count's budget is smaller
    assert depth["cursor"]["batchSize"] >= 101  # every queue in the first reply: no getMore

    # Labels: 20 queues (the served, then the paused ones first), the other 82 add up under one label.
    queues = {dict(labels)["queue"] for name, labels in samples if name == "mongo_job_queue_jobs"}
    assert len(queues) == 21 and {"__other__", "mail", "q050", "idle"} <= queues
    assert value(samples, "mongo_job_queue_jobs", status="pending") == 201
    assert value(samples, "mongo_job_queue_jobs", queue="__other__", status="pending") == 2 * 82
    assert value(samples, "mongo_job_queue_jobs", status="completed") == 300
    assert value(samples, "mongo_job_queue_jobs", status="failed") == 100
    assert value(samples, "mongo_job_queue_jobs", queue="q050", status="pending") == 2
    assert value(samples, "mongo_job_queue_queue_paused", queue="q050") == 1
    assert value(samples, "mongo_job_queue_queue_paused", queue="idle") == 1
    assert value(samples, "mongo_job_queue_queue_paused", queue="__other__") == 0  # no series for a mix
    # The oldest due job is q099's (100 s old), counted under "other": the maximum over its queues.
    assert 99 <= value(samples, "mongo_job_queue_oldest_due_job_age_seconds", queue="__other__") < 200
    assert value(samples, "mongo_job_queue_oldest_due_job_age_seconds", queue="mail") == 0  # not due yet

    # The same three commands for 10 times fewer queues.
    queue.store.collection.delete_many({"queue": {"$gte": "q010", "$lt": "r"}})
    commands.clear()
    samples = scrape()
    assert sorted(commands.names()) == ["aggregate", "aggregate", "find"]
    assert value(samples, "mongo_job_queue_jobs", status="pending") == 21
    assert 10 <= value(samples, "mongo_job_queue_oldest_due_job_age_seconds", queue="q009") < 60

    # The aggregation reads the claim index, not the collection.
    plan = raw_db.command(
        "explain", {"aggregate": "prometheus_jobs", "pipeline": depth_pipeline(utcnow()), "cursor": {}}
    )
    assert "IXSCAN" in str(plan) and "COLLSCAN" not in str(plan)


@pytest.mark.integration
def test_the_middleware_caps_queue_and_job_type_label_values(make_queue, registry, scrape) -> None:
    queue = make_queue()
    queue.add_middleware(PrometheusMiddleware(registry, max_label_values=3))
    for n in range(5):
        queue.enqueue(f"type{n}", {}, queue=f"tenant-{n}")  # free-form names, e.g. one queue per customer
    samples = scrape()
    series = [dict(labels) for name, labels in samples if name == "mongo_job_queue_jobs_enqueued_total"]
    assert len(series) == 4
    assert value(samples, "mongo_job_queue_jobs_enqueued_total", queue="__other__", job_type="__other__") == 2
    assert value(samples, "mongo_job_queue_jobs_enqueued_total") == 5
    with pytest.raises(ValueError, match="max_label_values"):
        PrometheusMiddleware(registry)  # one cap per registry, as one set of buckets


@pytest.mark.integration
def test_a_scrape_storm_reads_the_database_once(counted, registry, scrape, monkeypatch, caplog) -> None:
    queue, commands = counted
    queue.enqueue("ok", {})
    collector = QueueStatsCollector(queue, cache_seconds=60)
    commands.clear()
    registry.register(collector)
    assert commands.names() == []  # registering reads nothing
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: scrape(), range(16)))
    assert sorted(commands.names()) == ["aggregate", "aggregate", "find"]  # one round for 16 scrapes
    assert all(value(s, "mongo_job_queue_jobs", queue="default", status="pending") == 1 for s in results)

    # A failed read: up is 0, the depth series are absent rather than stale, and the failure is cached too.
    calls: list[int] = []

    def down(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        raise ConnectionError("database down")

    monkeypatch.setattr(prometheus.depth, "read_depth", down)
    registry.unregister(collector)
    registry.register(QueueStatsCollector(queue, cache_seconds=60))
    with caplog.at_level("WARNING", logger="mongo_job_queue.contrib.prometheus"):
        for _ in range(5):
            samples = scrape()
    assert len(calls) == 1
    assert value(samples, "mongo_job_queue_stats_up") == 0
    assert not [key for key in samples if key[0] == "mongo_job_queue_jobs"]
    assert "queue stats for Prometheus failed" in caplog.text


@pytest.mark.integration
def test_instrument_is_idempotent_and_one_depth_collector_per_model_and_registry(make_queue, registry) -> None:
    queue = make_queue()
    middleware = instrument(queue, registry)
    assert instrument(queue, registry) is middleware
    assert sum(isinstance(m, PrometheusMiddleware) for m in queue.hooks.items) == 1
    later = make_queue()  # the same model: another app of a factory, say
    assert instrument(later, registry) is not middleware
    other_model = create_job_queue(job_model=CountedJob)
    message = (
        "this registry already has the queue depth collector of job model IntegrationJob (collection 'jobs', "
        "alias 'mjq_integration'); job model CountedJob (collection 'prometheus_jobs', alias 'mjq_counted') "
        "needs a registry of its own"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        instrument(other_model, registry)
    instrument(other_model, CollectorRegistry())  # its own registry
    instrument(other_model, registry, depth=False)  # or no depth here
    with pytest.raises(ValueError, match="buckets"):
        PrometheusMiddleware(registry, buckets=(1.0, float("inf")))


@pytest.mark.integration
def test_an_app_factory_instruments_every_app_it_builds(job_model, registry, scrape) -> None:
    """One app per test, as a test suite builds them: each app's queue is instrumented on the same registry."""
    flask = pytest.importorskip("flask")
    from mongo_job_queue.contrib.flask import MongoJobQueue

    jobs = MongoJobQueue(job_model=job_model)
    jobs.register_handler("ok", lambda job: None)

    def create_app(name: str) -> Any:
        app = flask.Flask(name)
        jobs.init_app(app)
        instrument(jobs.get_queue(app), registry, cache_seconds=0)
        return app

    first = create_app("first")
    jobs.get_queue(first).enqueue("ok", {})
    second = create_app("second")
    queue = jobs.get_queue(second)
    queue.enqueue("ok", {})
    assert queue.run_once() is not None
    samples = scrape()
    assert value(samples, "mongo_job_queue_jobs", queue="default", status="pending") == 1
    assert value(samples, "mongo_job_queue_jobs", queue="default", status="completed") == 1
    assert value(samples, "mongo_job_queue_jobs_enqueued_total") == 2  # both apps count into one registry
    assert value(samples, "mongo_job_queue_jobs_finished_total", outcome="completed") == 1


_MULTIPROCESS_RUN = """
import os, sys
import mongoengine
from mongo_job_queue import create_job_queue
from mongo_job_queue.contrib.prometheus import PrometheusMiddleware, make_wsgi_app
from integration.models import ALIAS, IntegrationJob

mongoengine.connect(db=os.environ["MJQ_TEST_DB"], host=os.environ["MONGODB_URI"], alias=ALIAS)
queue = create_job_queue(job_model=IntegrationJob, middleware=[PrometheusMiddleware()])
queue.register_handler("ok", lambda job: None)
if sys.argv[1] == "work":
    assert queue.run_once().status == "completed"
else:  # serve: one process aggregates every process's files, plus the depth read from the database
    app = make_wsgi_app(queue=queue)
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda status, headers: None))
    sys.stdout.write(body.decode())
"""


@pytest.mark.integration
def test_multiprocess_mode_aggregates_worker_processes(make_queue, mongodb_uri, db_name, tmp_path) -> None:
    queue = make_queue()
    queue.enqueue("ok", {})
    queue.enqueue("ok", {})
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "MONGODB_URI": mongodb_uri,
        "MJQ_TEST_DB": db_name,
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }

    def run(mode: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", _MULTIPROCESS_RUN, mode], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("work")
    run("work")  # a second process: its own files in the same directory
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(run("serve"))
        for sample in family.samples
    }
    assert value(samples, "mongo_job_queue_jobs_finished_total", outcome="completed") == 2
    assert value(samples, "mongo_job_queue_job_duration_seconds_count") == 2
    assert value(samples, "mongo_job_queue_jobs", queue="default", status="completed") == 2
    assert value(samples, "mongo_job_queue_stats_up") == 1


@pytest.mark.integration
def test_cli_worker_metrics_port(job_model, make_queue, spawn) -> None:
    queue = make_queue()
    for n in range(3):
        queue.enqueue("ok", {"n": n})
    queue.enqueue("fail", {})
    proc = spawn(
        "worker", "--app", "integration.cli_app:make_queue", "--metrics-port", "0", "--metrics-addr", "127.0.0.1"
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def metrics_url() -> str | None:
        for line in list(lines):
            match = re.search(r"Prometheus metrics at (http://127\.0\.0\.1:\d+/metrics)", line)
            if match:
                return match.group(1)
        assert proc.poll() is None, "".join(lines)
        return None

    url = wait_until(metrics_url, timeout=60, what="the worker's metrics URL in its log")

    def settled() -> Samples | None:
        samples = fetch(url)
        return samples if value(samples, "mongo_job_queue_jobs_finished_total") == 4 else None

    samples = wait_until(settled, timeout=60, interval=0.1, what="4 handler runs scraped from the worker")
    assert value(samples, "mongo_job_queue_jobs_finished_total", job_type="ok", outcome="completed") == 3
    assert value(samples, "mongo_job_queue_jobs_finished_total", job_type="fail", outcome="failed") == 1
    wait_until(lambda: value(fetch(url), "mongo_job_queue_jobs", status="completed") == 3, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(lines)


def test_cli_metrics_port_is_validated() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mongo_job_queue", "worker", "--app", "x:y", "--metrics-port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "must be 0 to 65535" in proc.stderr


def test_wsgi_app_serves_the_given_registry(registry) -> None:
    registry_app = make_wsgi_app(registry)
    PrometheusMiddleware(registry)
    body = b"".join(registry_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda status, headers: None))
    assert b"# TYPE mongo_job_queue_jobs_finished_total counter" in body


def examined(raw_db: Any, pipeline: list[dict[str, Any]]) -> tuple[int, int]:
    """``(keys, docs)`` examined by the aggregation, from its explain."""
    plan = raw_db.command("explain", {"aggregate": "prometheus_jobs", "pipeline": pipeline, "cursor": {}})
    stats = plan.get("executionStats") or plan["stages"][0]["$cursor"]["executionStats"]
    return stats["totalKeysExamined"], stats["totalDocsExamined"]


@pytest.mark.integration
def test_the_depth_read_costs_the_unfinished_jobs_not_the_retained_ones(
    counted, registry, scrape, raw_db, monkeypatch
) -> None:
    # The depth aggregation read every retained job: 200,000 completed ones took it past maxTimeMS, and
    # stats_up went 0 with every depth series gone. Now it reads pending and processing keys only.
    queue, _ = counted
    seed(queue, queues=2, finished_per_queue=0)  # 4 pending jobs
    registry.register(QueueStatsCollector(queue, cache_seconds=0))
    before = examined(raw_db, depth_pipeline(utcnow()))
    done = {"type": "ok", "priority": 0, "attempts": 1, "max_retries": 3, "created_at": utcnow(), "run_at": utcnow()}
    queue.store.collection.insert_many(
        [{**done, "queue": f"q{n % 2:03d}", "status": "failed" if n % 4 == 0 else "completed"} for n in range(2_000)]
    )  # 2,000 retained finished jobs
    assert examined(raw_db, depth_pipeline(utcnow())) == before
    assert max(before) <= 4
    samples = scrape()
    assert value(samples, "mongo_job_queue_jobs", status="pending") == 4
    assert value(samples, "mongo_job_queue_jobs", status="completed") == 1_500
    assert value(samples, "mongo_job_queue_jobs", queue="q000", status="failed") == 500

    # The finished count is best effort: when it fails (a timeout on a huge retention), its series are
    # absent, and the depth series and stats_up stand.
    broken = [{"$match": {"status": "completed"}}, {"$nope": 1}]
    monkeypatch.setattr(prometheus.depth, "finished_pipeline", lambda: broken)
    samples = scrape()
    assert value(samples, "mongo_job_queue_stats_up") == 1
    assert value(samples, "mongo_job_queue_jobs", status="pending") == 4
    assert not [key for key in samples if key[0] == "mongo_job_queue_jobs" and dict(key[1])["status"] == "completed"]
    assert finished_pipeline()[0]["$match"]["status"]["$in"] == ["completed", "failed", "cancelled"]
