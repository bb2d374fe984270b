"""OpenTelemetry: a producer span here, consumer spans in a worker process, joined through ``job.headers``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mongo_job_queue import JobCancelled
from mongo_job_queue.contrib.otel import OpenTelemetryMiddleware

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    # A provider of the test's own, never the global one: tests stay isolated.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def run_worker(mongodb_uri: str, db_name: str, *args: str) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "MONGODB_URI": mongodb_uri,
        "MJQ_TEST_DB": db_name,
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "integration.otel_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def enqueue_three(queue: Any, provider: TracerProvider, exporter: InMemorySpanExporter) -> tuple[Any, dict[str, Any]]:
    """Enqueue ok, flaky and bad inside a "request" span; return it and the producer spans by job id."""
    with provider.get_tracer("test").start_as_current_span("request") as request:
        jobs = [queue.enqueue(job_type, {"n": n}) for n, job_type in enumerate(["ok", "flaky", "bad"])]
    producers = {
        span.attributes["messaging.message.id"]: span
        for span in exporter.get_finished_spans()
        if span.kind == SpanKind.PRODUCER
    }
    assert set(producers) == {str(job.id) for job in jobs}
    return request, producers


@pytest.mark.integration
def test_consumer_spans_in_a_worker_process_are_children_of_the_producer(
    make_queue, raw_db, mongodb_uri, db_name, provider, exporter
) -> None:
    queue = make_queue()
    queue.add_middleware(OpenTelemetryMiddleware(provider))
    request, producers = enqueue_three(queue, provider, exporter)

    for job_id, producer in producers.items():
        ctx = producer.get_span_context()
        assert producer.name == "send default"
        assert producer.parent.span_id == request.get_span_context().span_id  # a child of the current span
        assert producer.attributes["messaging.system"] == "mongo_job_queue"
        assert producer.attributes["messaging.operation.type"] == "send"
        assert producer.attributes["messaging.operation.name"] == "send"
        assert producer.attributes["messaging.destination.name"] == "default"
        stored = raw_db.jobs.find_one({"_id": ObjectId(job_id)})
        assert stored["headers"]["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")

    spans = run_worker(mongodb_uri, db_name)
    consumers = [s for s in spans if s["kind"] == "CONSUMER"]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for span in consumers:
        by_job.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    assert set(by_job) == set(producers)
    for job_id, attempts in by_job.items():
        producer_ctx = producers[job_id].get_span_context()
        for span in attempts:
            # Every attempt, retries included, is a child of the one producer span, in its trace.
            assert span["trace_id"] == f"{producer_ctx.trace_id:032x}"
            assert span["parent_span_id"] == f"{producer_ctx.span_id:016x}"
            assert span["name"] == "process default"
            attrs = span["attributes"]
            assert attrs["messaging.system"] == "mongo_job_queue"
            assert attrs["messaging.operation.type"] == "process"
            assert attrs["messaging.operation.name"] == "process"
            assert attrs["messaging.destination.name"] == "default"
            assert attrs["messaging.client.id"]

    by_type = {attempts[0]["attributes"]["mongo_job_queue.job.type"]: attempts for attempts in by_job.values()}
    [ok] = by_type["ok"]
    assert ok["status"] == "UNSET" and ok["attributes"]["mongo_job_queue.job.outcome"] == "completed"
    [app_work] = [s for s in spans if s["name"] == "app work"]
    assert app_work["parent_span_id"] == ok["span_id"]  # the handler's spans nest under the job's

    first, second = sorted(by_type["flaky"], key=lambda s: s["attributes"]["mongo_job_queue.job.attempt"])
    assert first["attributes"]["mongo_job_queue.job.attempt"] == 1
    assert first["status"] == "ERROR" and "smtp down" in first["status_description"]
    assert first["attributes"]["mongo_job_queue.job.outcome"] == "retry"
    assert first["attributes"]["error.type"] == "builtins.ConnectionError"
    events = {e["name"]: e["attributes"] for e in first["events"]}
    assert set(events) == {"retry_scheduled", "exception"}
    assert events["exception"]["exception.type"] == "ConnectionError"
    assert events["retry_scheduled"]["mongo_job_queue.retry.delay_ms"] >= 0
    assert second["attributes"]["mongo_job_queue.job.attempt"] == 2
    assert second["status"] == "UNSET" and second["attributes"]["mongo_job_queue.job.outcome"] == "completed"

    [bad] = by_type["bad"]
    assert bad["status"] == "ERROR" and bad["attributes"]["mongo_job_queue.job.outcome"] == "failed"
    assert bad["attributes"]["error.type"] == "mongo_job_queue.errors.FailJob"


@pytest.mark.integration
def test_link_mode_starts_a_new_trace_linked_to_the_producer(
    make_queue, mongodb_uri, db_name, provider, exporter
) -> None:
    queue = make_queue()
    queue.add_middleware(OpenTelemetryMiddleware(provider))
    _, producers = enqueue_three(queue, provider, exporter)

    spans = run_worker(mongodb_uri, db_name, "--link")
    consumers = [s for s in spans if s["kind"] == "CONSUMER"]
    assert len(consumers) == 4  # ok, flaky twice, bad
    for span in consumers:
        producer_ctx = producers[span["attributes"]["messaging.message.id"]].get_span_context()
        assert span["parent_span_id"] is None
        assert span["trace_id"] != f"{producer_ctx.trace_id:032x}"
        assert span["links"] == [
            {"trace_id": f"{producer_ctx.trace_id:032x}", "span_id": f"{producer_ctx.span_id:016x}"}
        ]
    assert len({span["trace_id"] for span in consumers}) == 4  # each attempt its own trace


@pytest.mark.integration
def test_inline_runs_nest_and_restore_the_context(make_queue, provider, exporter) -> None:
    """Eager mode runs a job inside the enqueue of another job's handler: spans nest, the context unwinds."""
    queue = make_queue()
    queue.add_middleware(OpenTelemetryMiddleware(provider))
    queue.eager = True

    @queue.handler("outer")
    def outer(job) -> None:
        queue.enqueue("inner", {}, max_retries=0)

    @queue.handler("inner")
    def inner(job) -> None:
        raise RuntimeError("inner broke")

    queue.enqueue("outer", {}, max_retries=0)
    assert not trace.get_current_span().get_span_context().is_valid  # nothing left attached
    spans = {
        span.name + ":" + span.attributes["mongo_job_queue.job.type"]: span for span in exporter.get_finished_spans()
    }
    send_outer, process_outer = spans["send default:outer"], spans["process default:outer"]
    send_inner, process_inner = spans["send default:inner"], spans["process default:inner"]
    assert process_outer.parent.span_id == send_outer.context.span_id
    assert send_inner.parent.span_id == process_outer.context.span_id  # enqueued inside the outer handler
    assert process_inner.parent.span_id == send_inner.context.span_id
    assert process_inner.status.status_code == StatusCode.ERROR
    assert process_inner.attributes["mongo_job_queue.job.outcome"] == "failed"
    assert process_outer.status.status_code == StatusCode.UNSET
    assert len({span.context.trace_id for span in spans.values()}) == 1


@pytest.mark.integration
def test_a_job_enqueued_without_tracing_gets_a_root_span(make_queue, provider, exporter) -> None:
    queue = make_queue()
    queue.register_handler("ok", lambda job: None)
    job = queue.enqueue("ok", {})  # no middleware yet: no headers
    queue.add_middleware(OpenTelemetryMiddleware(provider))
    with provider.get_tracer("test").start_as_current_span("ambient"):
        assert queue.run_once().status == "completed"
    [process] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert process.parent is None and process.attributes["messaging.message.id"] == str(job.id)


@pytest.mark.integration
def test_a_cancelled_run_is_not_an_error(make_queue, provider, exporter) -> None:
    queue = make_queue()
    queue.add_middleware(OpenTelemetryMiddleware(provider))

    @queue.handler("stoppable")
    def stoppable(job) -> None:
        raise JobCancelled("stopped on request")

    job = queue.enqueue("stoppable", {})
    assert queue.run_once() is not None
    assert queue.get_job(job.id).status == "cancelled"
    [span] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert span.attributes["mongo_job_queue.job.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes
    assert [event.name for event in span.events] == ["cancelled"]


@pytest.mark.integration
def test_the_flask_factory_adds_the_middleware_to_each_app_queue(job_model, provider, exporter) -> None:
    """docs/flask.rst's recipe: the middleware added in the factory traces from the request to the run."""
    flask = pytest.importorskip("flask")
    from mongo_job_queue.contrib.flask import MongoJobQueue

    jobs = MongoJobQueue(job_model=job_model)
    jobs.register_handler("greet", lambda job: "hello")

    def create_app() -> Any:
        app = flask.Flask("traced")
        app.config["TESTING"] = True
        jobs.init_app(app)
        jobs.get_queue(app).add_middleware(OpenTelemetryMiddleware(provider))

        @app.post("/greet")
        def greet() -> Any:
            with provider.get_tracer("test").start_as_current_span("POST /greet"):  # the request's span
                return {"id": str(jobs.enqueue("greet", {}).id)}

        return app

    app = create_app()
    job_id = app.test_client().post("/greet").get_json()["id"]
    assert jobs.get_queue(app).drain() == 1
    spans = {span.name: span for span in exporter.get_finished_spans()}
    request, send, process = spans["POST /greet"], spans["send default"], spans["process default"]
    assert send.parent.span_id == request.context.span_id
    assert process.parent.span_id == send.context.span_id
    assert process.attributes["messaging.message.id"] == job_id


@pytest.mark.integration
def test_a_duplicate_unique_enqueue_names_the_existing_job(make_queue, job_model, provider, exporter) -> None:
    """The second send span points at the job the enqueue returned, which exists, and says it was a duplicate."""
    queue = make_queue()
    queue.add_middleware(OpenTelemetryMiddleware(provider))
    first = queue.enqueue("signup", {"user": 1}, unique_key="signup:1")
    again = queue.enqueue("signup", {"user": 1}, unique_key="signup:1")
    assert again.id == first.id and job_model.objects.count() == 1
    sent, duplicate = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert sent.attributes["messaging.message.id"] == str(first.id)
    assert "mongo_job_queue.enqueue.duplicate" not in sent.attributes
    assert duplicate.attributes["messaging.message.id"] == str(first.id)
    assert duplicate.attributes["mongo_job_queue.enqueue.duplicate"] is True
    assert duplicate.status.status_code is StatusCode.UNSET
