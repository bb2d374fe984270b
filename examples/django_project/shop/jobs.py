"""Handlers of the shop app, found by autodiscovery like an ``admin`` module."""

from __future__ import annotations

import logging
from typing import Any

from tenacity import retry_if_exception_type

from mongo_job_queue.contrib.django import handler

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
