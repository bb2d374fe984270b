"""Found by ``autodiscover_modules('jobs')``, like an app's ``admin`` module."""

from __future__ import annotations

from mongo_job_queue.contrib.django import handler

IMPORTS = []
IMPORTS.append(1)  # counts how often this module ran: autodiscovery must import it once


@handler("dj_app_job")
def app_job(job) -> str:
    return "from a Django app"
