"""Found by ``autodiscover_modules('jobs')``, like an app's ``admin`` module."""

from __future__ import annotations

from mongo_job_queue.contrib.django import handler, periodic, schedule

IMPORTS = []
IMPORTS.append(1)  # counts how often this module ran: autodiscovery must import it once


@handler("dj_app_job")
def app_job(job) -> str:
    return "from a Django app"


@periodic("dj_nightly", "0 3 * * *", timezone="Europe/Paris")
def nightly(job) -> str:
    return "scheduled"


# Defined at import, in ready(): must not touch the (unreachable) database either.
schedule("dj_sync", job_type="dj_app_job", every_ms=60_000, data={"full": False})
