"""A registry module outside any Django app, listed in ``REGISTRY_MODULES``."""

from __future__ import annotations

from mongo_job_queue.contrib.django import get_queue, register_handler

register_handler("dj_plain_job", lambda job: "from a plain module")

# As docs/django.rst's "Tracing and metrics" adds the middleware: once per process, in ready().
try:
    from mongo_job_queue.contrib.otel import OpenTelemetryMiddleware
except ImportError:  # the otel extra is not installed
    pass
else:
    get_queue().add_middleware(OpenTelemetryMiddleware())
