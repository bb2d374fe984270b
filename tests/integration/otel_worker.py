"""The worker process of the OpenTelemetry tests: runs the due jobs, prints its finished spans as JSON.

``python -m integration.otel_worker [--link]``, with ``tests/`` on the path,
on ``MONGODB_URI`` / ``MJQ_TEST_DB``, with the OpenTelemetry middleware and
an in-memory exporter. It runs jobs until
none is pending or processing (retries are due at once), then writes one
JSON list of spans to stdout for the test to match against the producer
spans of its own process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import mongoengine
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mongo_job_queue import FailJob, create_job_queue
from mongo_job_queue.contrib.otel import OpenTelemetryMiddleware

from .models import ALIAS, IntegrationJob


def span_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "events": [{"name": event.name, "attributes": dict(event.attributes or {})} for event in span.events],
    }


def main(argv: list[str]) -> int:
    mongoengine.connect(
        db=os.environ["MJQ_TEST_DB"], host=os.environ["MONGODB_URI"], alias=ALIAS, uuidRepresentation="standard"
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app_tracer = provider.get_tracer("otel_worker")
    queue = create_job_queue(
        job_model=IntegrationJob,
        config={"retry_delay_ms": 0, "max_retries": 2},
        middleware=[OpenTelemetryMiddleware(provider, link="--link" in argv)],
    )

    @queue.handler("ok")
    def ok(job: IntegrationJob) -> None:
        with app_tracer.start_as_current_span("app work"):  # the handler's own span nests under the job's
            pass

    @queue.handler("flaky")
    def flaky(job: IntegrationJob) -> None:
        if job.attempts == 1:
            raise ConnectionError("smtp down")

    @queue.handler("bad")
    def bad(job: IntegrationJob) -> None:
        raise FailJob("card declined")

    deadline = time.monotonic() + 60
    idle = threading.Event()
    while time.monotonic() < deadline:
        queue.drain()
        counts = queue.counts()
        if not counts["pending"] and not counts["processing"]:
            break
        idle.wait(0.05)
    else:
        print(f"jobs left after 60s: {queue.counts()}", file=sys.stderr)
        return 1
    provider.shutdown()
    json.dump([span_json(span) for span in exporter.get_finished_spans()], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
