"""An explicit registry module for code outside Django apps (``REGISTRY_MODULES``)."""

from __future__ import annotations

from typing import Any

from mongo_job_queue.contrib.django import handler


@handler("generate_report", max_retries=2)
def generate_report(job: Any) -> dict[str, Any]:
    if job.attempts == 1:
        # The first attempt meets a busy warehouse: the queue retries it after a backoff.
        raise ConnectionError("data warehouse busy, try again")
    return {"organization": job.organization, "rows": 42, "attempts": job.attempts}
