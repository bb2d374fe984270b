"""OpenTelemetry tracing of jobs, after the messaging semantic conventions.

::

    from mongo_job_queue.contrib.otel import OpenTelemetryMiddleware

    queue = create_job_queue(job_model=Job, middleware=[OpenTelemetryMiddleware()])

Add the middleware to the queue object of the processes that enqueue *and*
of the workers. The app configures the SDK (exporter, sampler, resource) as
usual; this module only needs ``opentelemetry-api``.

Span model:

* ``send <queue>`` (kind PRODUCER) around each enqueue, a child of whatever
  span is current (a request, say). Its context is injected with
  ``opentelemetry.propagate.inject`` (W3C ``traceparent`` by default) into
  the job document's ``headers`` before the insert, so it travels with the
  job to any worker process, now or after retries.
* ``process <queue>`` (kind CONSUMER) around each handler run, extracted
  from ``job.headers``, and current while the handler runs, so the
  handler's own spans (HTTP calls, queries) nest under it. A failed attempt
  records the exception and sets status ERROR (a cancelled run does not: it
  gets a ``cancelled`` event and keeps status UNSET); each retry is another
  ``process`` span with the same producer, so the attempts of one job read
  as siblings in one trace.

**Parent, not link, by default.** The conventions let a consumer span that
handles a single message use the creation context as its parent, and a job
is always handled alone. A parent puts the request, the enqueue and every
attempt in one trace that every tracing UI shows as a tree, and a
parent-based sampler keeps or drops the job's spans with the request's.
Pass ``link=True`` for queues whose jobs run hours later or fan out by the
thousand: each attempt then starts its own trace, with a Link to the
producer span (and the baggage kept), so no trace stays open for hours and
the worker samples independently.

Attributes: ``messaging.system`` (``mongo_job_queue``),
``messaging.operation.type`` and ``messaging.operation.name`` (``send`` /
``process``), ``messaging.destination.name`` (the queue),
``messaging.message.id`` (the job id; for a duplicate unique enqueue, the
existing job's, with ``mongo_job_queue.enqueue.duplicate``), ``messaging.client.id``
(the worker id, on process spans), plus ``mongo_job_queue.job.type``,
``mongo_job_queue.job.attempt`` and ``mongo_job_queue.job.outcome``.

**Chunks** (batch handlers, :doc:`chunks`): one ``process <queue>`` CONSUMER
span per chunk, always in a trace of its own (a chunk has many producers,
so none can be its parent) with a Link to each job's producer span, and
``messaging.batch.message_count``. It is current while the handler runs;
each job's outcome is an ``mongo_job_queue.job`` event on it (no span per
job), and the span's status is ERROR when the handler raised.
"""

from __future__ import annotations

from ..extras import missing_extra

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_extra(__name__, "the OpenTelemetry API", "otel", "opentelemetry-api") from exc

import contextvars
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Optional

from .. import __version__
from ..middleware import Middleware, Outcome
from ..model import safe_str

__all__ = ["SYSTEM", "OpenTelemetryMiddleware"]

#: ``messaging.system``: no well-known value fits, so a custom one, as the conventions allow.
SYSTEM = "mongo_job_queue"

# Producer spans waiting for after_enqueue or on_enqueue_aborted. The core
# always sends one of the two; the bound only guards against a caller that
# builds documents through the hooks without inserting them.
_MAX_SENDING = 1_000
_MAX_DEPTH = 16  # consumer spans per thread: inline runs nest; more means after_process never came

#: A span's ``mongo_job_queue.job.outcome``: the worker's, or "unknown" for a run whose after_process never came.
_SpanOutcome = Outcome | Literal["unknown"]


@dataclass
class _Chunk:
    job_ids: set[str]
    span: Span
    token: contextvars.Token[Context]


@dataclass
class _Active:
    job_id: str
    span: Span
    token: contextvars.Token[Context]


def _error_type(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


class OpenTelemetryMiddleware(Middleware):
    """Traces enqueues (PRODUCER) and handler runs (CONSUMER), linked through ``job.headers``.

    Args:
        tracer_provider: Default: the global provider, looked up when spans start.
        link: Start each ``process`` span in a new trace with a Link to the
            producer, instead of as the producer's child (see the module docs).
    """

    def __init__(self, tracer_provider: Optional[TracerProvider] = None, *, link: bool = False) -> None:
        self.tracer = trace.get_tracer(__name__, __version__, tracer_provider=tracer_provider)
        self.link = link
        self._lock = threading.Lock()
        self._sending: OrderedDict[Any, Span] = OrderedDict()
        self._running: dict[str, Span] = {}
        self._local = threading.local()

    # -- producer -----------------------------------------------------------

    def before_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        destination = str(doc.get("queue") or "default")
        span = self.tracer.start_span(
            f"send {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": destination,
                "messaging.message.id": str(doc.get("_id")),
                "mongo_job_queue.job.type": str(doc.get("type")),
            },
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        if carrier:
            doc["headers"] = {**(doc.get("headers") or {}), **carrier}
        stale = []
        with self._lock:
            self._sending[doc.get("_id")] = span
            while len(self._sending) > _MAX_SENDING:
                stale.append(self._sending.popitem(last=False)[1])
        for old in stale:
            # Not an error by itself: a duplicate unique key also ends here.
            old.set_attribute("mongo_job_queue.enqueue.confirmed", False)
            old.end()

    def after_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        with self._lock:
            span = self._sending.pop(doc.get("_id"), None)
        if span is not None:
            span.end()

    def on_enqueue_duplicate(self, queue: Any, doc: dict[str, Any], *, existing: dict[str, Any]) -> None:
        # The enqueue returns the existing job: the span names it, not the id that was never inserted.
        with self._lock:
            span = self._sending.get(doc.get("_id"))
        if span is not None:
            span.set_attribute("messaging.message.id", str(existing.get("_id")))
            span.set_attribute("mongo_job_queue.enqueue.duplicate", True)

    def on_enqueue_aborted(self, queue: Any, doc: dict[str, Any], *, exc: Optional[BaseException]) -> None:
        with self._lock:
            span = self._sending.pop(doc.get("_id"), None)
        if span is None:
            return
        if exc is None:  # the existing job with this unique key was returned instead
            span.set_attribute("mongo_job_queue.enqueue.duplicate", True)
        else:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute("error.type", _error_type(exc))
        span.end()

    # -- consumer -----------------------------------------------------------

    def _producer(self, job: Any) -> tuple[Context, Any]:
        """The context extracted from a job's headers, and its producer's span context."""
        headers = getattr(job, "headers", None) or {}
        carrier = {str(k): v for k, v in headers.items() if isinstance(v, str)}
        # An empty base context: a job without a trace context starts its own
        # trace instead of joining whatever span happens to be current here.
        extracted = propagate.extract(carrier, context=Context())
        return extracted, trace.get_current_span(extracted).get_span_context()

    def before_chunk(self, queue: Any, jobs: list[Any]) -> None:
        first = jobs[0]
        destination = str(getattr(first, "queue", None) or "default")
        producers = [self._producer(job)[1] for job in jobs]
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
            "messaging.batch.message_count": len(jobs),
            "mongo_job_queue.job.type": str(getattr(first, "type", None)),
        }
        worker_id = getattr(getattr(getattr(queue, "worker", None), "owner", None), "worker_id", None)
        if worker_id:
            attributes["messaging.client.id"] = str(worker_id)
        parent = trace.set_span_in_context(trace.INVALID_SPAN, Context())
        span = self.tracer.start_span(
            f"process {destination}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(p) for p in producers if p.is_valid] or None,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._local.chunk = _Chunk({str(getattr(job, "pk", None)) for job in jobs}, span, token)

    def _in_chunk(self, job: Any) -> Optional[_Chunk]:
        chunk: Optional[_Chunk] = getattr(self._local, "chunk", None)
        return chunk if chunk is not None and str(getattr(job, "pk", None)) in chunk.job_ids else None

    def after_chunk(
        self,
        queue: Any,
        jobs: list[Any],
        *,
        outcomes: Any,
        exc: Optional[BaseException],
        duration_s: float,
    ) -> None:
        chunk: Optional[_Chunk] = getattr(self._local, "chunk", None)
        if chunk is None:
            return
        self._local.chunk = None
        span = chunk.span
        if exc is not None:
            span.record_exception(exc)
            span.set_attribute("error.type", _error_type(exc))
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {safe_str(exc)}"))
        span.end()
        otel_context.detach(chunk.token)

    def before_process(self, queue: Any, job: Any) -> None:
        if self._in_chunk(job) is not None:
            return  # the chunk's span covers it
        destination = str(getattr(job, "queue", None) or "default")
        job_id = str(getattr(job, "pk", None))
        extracted, producer = self._producer(job)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
            "messaging.message.id": job_id,
            "mongo_job_queue.job.type": str(getattr(job, "type", None)),
            "mongo_job_queue.job.attempt": int(getattr(job, "attempts", 0) or 0),
        }
        worker_id = getattr(getattr(getattr(queue, "worker", None), "owner", None), "worker_id", None)
        if worker_id:
            attributes["messaging.client.id"] = str(worker_id)
        if self.link:
            parent = trace.set_span_in_context(trace.INVALID_SPAN, extracted)  # a new trace, baggage kept
            links = [Link(producer)] if producer.is_valid else None
        else:
            parent, links = extracted, None
        span = self.tracer.start_span(
            f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        stack = self._stack()
        if len(stack) >= _MAX_DEPTH:
            # after_process never came for these (an outcome write raised):
            # end them instead of keeping them open forever.
            for stale in stack[: -_MAX_DEPTH // 2]:
                self._finish(stale, "unknown", None)
            del stack[: -_MAX_DEPTH // 2]
        stack.append(_Active(job_id, span, token))
        with self._lock:
            self._running[job_id] = span

    def after_process(
        self, queue: Any, job: Any, *, outcome: Outcome, exc: Optional[BaseException], duration_s: float
    ) -> None:
        chunk = self._in_chunk(job)
        if chunk is not None:
            event = {"messaging.message.id": str(getattr(job, "pk", None)), "mongo_job_queue.job.outcome": outcome}
            if exc is not None:
                event["error.type"] = _error_type(exc)
            chunk.span.add_event("mongo_job_queue.job", event)
            return
        job_id = str(getattr(job, "pk", None))
        stack = self._stack()
        index = next((i for i in range(len(stack) - 1, -1, -1) if stack[i].job_id == job_id), None)
        if index is None:
            return
        # Entries above this one are inline runs whose after_process never
        # came: end them first, so the context is restored in LIFO order.
        for stale in reversed(stack[index + 1 :]):
            self._finish(stale, "unknown", None)
            otel_context.detach(stale.token)
        entry = stack[index]
        del stack[index:]
        self._finish(entry, outcome, exc)
        otel_context.detach(entry.token)

    def on_retry_scheduled(self, queue: Any, doc: dict[str, Any], *, delay_ms: int, exc: BaseException) -> None:
        self._event(doc, "retry_scheduled", {"mongo_job_queue.retry.delay_ms": delay_ms})

    def on_lease_lost(self, queue: Any, doc: dict[str, Any]) -> None:
        # Often from the heartbeat thread, while the handler still runs.
        self._event(doc, "lease_lost", {})

    # -- internals ----------------------------------------------------------

    def _stack(self) -> list[_Active]:
        stack: Optional[list[_Active]] = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _event(self, doc: dict[str, Any], name: str, attributes: dict[str, Any]) -> None:
        with self._lock:
            span = self._running.get(str(doc.get("_id")))
        if span is not None:
            span.add_event(name, attributes)

    def _finish(self, entry: _Active, outcome: _SpanOutcome, exc: Optional[BaseException]) -> None:
        with self._lock:
            if self._running.get(entry.job_id) is entry.span:
                del self._running[entry.job_id]
        span = entry.span
        span.set_attribute("mongo_job_queue.job.outcome", outcome)
        if outcome == "cancelled":
            # Someone asked for it (JobCancelled, or whatever the handler raised once asked): not an error.
            span.add_event("cancelled", {"exception.type": _error_type(exc)} if exc is not None else {})
        elif exc is not None:
            span.record_exception(exc)
            span.set_attribute("error.type", _error_type(exc))
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {safe_str(exc)}"))
        elif outcome == "lease_lost":
            span.set_attribute("error.type", "lease_lost")
            span.set_status(Status(StatusCode.ERROR, "lease lost: the outcome was not recorded"))
        elif outcome == "unknown":
            span.set_attribute("error.type", "outcome_unknown")
            span.set_status(Status(StatusCode.ERROR, "the worker reported no outcome for this run"))
        span.end()
