"""The extension and the handlers: registered at import, applied to every app at init_app."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import current_app
from tenacity import retry_if_exception_type

from mongo_job_queue.contrib.flask import MongoJobQueue

from .models import Job

log = logging.getLogger(__name__)

jobs = MongoJobQueue(job_model=Job)


@jobs.handler("send_welcome_email", retry=retry_if_exception_type(ConnectionError), max_retries=5)
def send_welcome_email(job: Job) -> dict[str, Any]:
    # A real app would talk to its mail service here; handlers run in the app context.
    sender = current_app.config["MAIL_SENDER"]
    log.info("welcome email from %s to %s (%s)", sender, job.data["email"], job.organization)
    return {"sent_to": job.data["email"], "from": sender}


@jobs.handler("resize_image")
def resize_image(job: Job) -> dict[str, Any]:
    return {"thumbnail": f"{job.data['image']}.thumb.jpg"}


@jobs.handler("generate_report", max_retries=2)
def generate_report(job: Job) -> dict[str, Any]:
    if job.attempts == 1:
        # The first attempt meets a busy warehouse: the queue retries it after a backoff.
        raise ConnectionError("data warehouse busy, try again")
    return {"organization": job.organization, "rows": 42, "attempts": job.attempts}


@jobs.handler("export_data")
def export_data(job: Job) -> dict[str, Any]:
    # A long job that reports how far it got; a cancelled one stops between steps.
    steps = int(job.data.get("steps", 10))
    for step in range(steps):
        if job.is_cancel_requested():
            return {"exported": step, "cancelled": True}
        time.sleep(job.data.get("step_ms", 100) / 1000)
        job.report_progress(100 * (step + 1) / steps, f"step {step + 1}/{steps}")
    return {"exported": steps}


# Every serving process fires this schedule (each gunicorn worker runs a
# worker); the unique (schedule, fire_time) index still makes one job per hour.
@jobs.periodic(
    "refresh_exchange_rates",
    every_ms=int(os.environ.get("EXCHANGE_RATES_EVERY_MS", "3600000")),
    organization="system",
)
def refresh_exchange_rates(job: Job) -> dict[str, Any]:
    return {"rates_as_of": job.fire_time.isoformat()}
