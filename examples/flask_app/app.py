"""The app factory: settings from the environment, two endpoints, the worker started at boot."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any, Optional

from flask import Flask, abort, jsonify, request, url_for

from mongo_job_queue import InvalidJobError, InvalidJobIdError

from .tasks import jobs


def create_app(settings: Optional[dict[str, Any]] = None) -> Flask:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config.update(
        MAIL_SENDER="noreply@example.com",
        MONGO_JOB_QUEUE_MONGODB_URI=os.environ.get("MONGODB_URI", "mongodb://localhost:27017"),
        MONGO_JOB_QUEUE_MONGODB_DB=os.environ.get("MONGODB_DB", "flask_example"),
        # Explicit: this app runs a worker in each serving process.
        MONGO_JOB_QUEUE_START_WORKER=os.environ.get("START_WORKER", "1") == "1",
        MONGO_JOB_QUEUE_CONFIG={
            "concurrency": 4,
            "retry_delay_ms": 200,
            "poll_interval_base_ms": 100,
            "poll_interval_max_ms": 1_000,
        },
    )
    app.config.update(settings or {})
    jobs.init_app(app)

    @app.get("/health")
    def health() -> Any:
        return {"ok": True}

    @app.post("/organizations/<organization>/jobs")
    def enqueue(organization: str) -> Any:
        body = request.get_json(silent=True) or {}
        job_type = body.get("type")
        if job_type not in jobs.queue.registry:
            return {"error": f"unknown job type {job_type!r}"}, 400
        try:
            job = jobs.enqueue(job_type, body.get("data") or {}, organization=organization)
        except InvalidJobError as exc:
            return {"error": str(exc)}, 400
        return {"id": str(job.id), "status_url": url_for("job_status", job_id=str(job.id))}, 202

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Any:
        try:
            job = jobs.queue.get_job(job_id)
        except InvalidJobIdError:  # not a job id at all: no such job either
            abort(404)
        if job is None:  # never enqueued, or removed by retention
            abort(404)
        return jsonify(
            id=str(job.id),
            type=job.type,
            organization=job.organization,
            status=job.status,
            attempts=job.attempts,
            result=job.result,
            last_error=job.last_error.message if job.last_error else None,
            worker_pid=job.lease_owner.pid if job.lease_owner else None,
        )

    mount_admin(app)
    return app


def mount_admin(app: Flask) -> None:
    """The admin UI at /admin/jobs, for HTTP Basic users viewer, operator and admin (when a password is set)."""
    password = os.environ.get("EXAMPLE_ADMIN_PASSWORD")
    if not password:
        return  # deny by default: no password, no admin UI
    from mongo_job_queue.contrib.admin import create_admin_app
    from mongo_job_queue.contrib.admin.flask import admin_blueprint

    def authorize(environ: Any) -> Optional[str]:
        auth = request.authorization  # Flask's request context: the blueprint runs the UI inside it
        if auth is None or auth.username not in ("viewer", "operator", "admin"):
            return None
        return auth.username if hmac.compare_digest(auth.password or "", password) else None

    def identify(environ: Any) -> str:
        return request.authorization.username if request.authorization else "unknown"

    queue = jobs.get_queue(app)
    admin = create_admin_app(queue, authorize=authorize, identify=identify, filter_fields=["organization"])
    app.register_blueprint(admin_blueprint(admin), url_prefix="/admin/jobs")
