"""Handlers and schedules of the shop app, found by autodiscovery like an ``admin`` module.

The cron schedule needs the ``cron`` extra: ``python -m pip install ".[django,cron]"`` in the checkout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tenacity import retry_if_exception_type

from mongo_job_queue.contrib.django import handler, periodic

from .documents import Job

log = logging.getLogger(__name__)


@handler("send_welcome_email", retry=retry_if_exception_type(ConnectionError), max_retries=5)
def send_welcome_email(job: Job) -> dict[str, Any]:
    # A real project would call django.core.mail.send_mail here.
    log.info("welcome email to %s (%s)", job.data["email"], job.organization)
    return {"sent_to": job.data["email"], "from": "noreply@example.com"}


@handler("resize_image")
def resize_image(job: Job) -> dict[str, Any]:
    return {"thumbnail": f"{job.data['image']}.thumb.jpg"}


@handler("export_data")
def export_data(job: Job) -> dict[str, Any]:
    # A long job that reports how far it got; a cancelled one stops between steps.
    steps = int(job.data.get("steps", 10))
    for step in range(steps):
        if job.is_cancel_requested():
            return {"exported": step, "cancelled": True}
        time.sleep(job.data.get("step_ms", 100) / 1000)
        job.report_progress(100 * (step + 1) / steps, f"step {step + 1}/{steps}")
    return {"exported": steps}


# Every process running a worker fires it; each morning still gets one job.
@periodic("daily_digest", "0 7 * * *", timezone="Europe/Paris", organization="shop")
def daily_digest(job: Job) -> dict[str, Any]:
    return {"digest_for": job.fire_time.isoformat()}
