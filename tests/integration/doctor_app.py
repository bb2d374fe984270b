"""An app module for the doctor's CLI tests: ``--app integration.doctor_app:make_queue``.

It connects from ``MONGODB_URI`` and ``MJQ_TEST_DB``, with the deliberate
faults the test asks for through the environment: ``MJQ_DOCTOR_W`` (the
connection's write concern, e.g. ``1``), ``MJQ_DOCTOR_SKEW_S`` (this host's
clock moved by that many seconds) and ``MJQ_DOCTOR_SYNC_CLOCK=0``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import mongoengine

from mongo_job_queue import PersistentJobQueue, create_job_queue
from mongo_job_queue.clock import utcnow

from .models import ALIAS, IntegrationJob

_options: dict[str, Any] = {}
if os.environ.get("MJQ_DOCTOR_W"):
    _options["w"] = int(os.environ["MJQ_DOCTOR_W"])
mongoengine.connect(
    db=os.environ["MJQ_TEST_DB"], host=os.environ["MONGODB_URI"], alias=ALIAS, uuidRepresentation="standard", **_options
)

_SKEW = timedelta(seconds=float(os.environ.get("MJQ_DOCTOR_SKEW_S", "0")))


def _skewed() -> datetime:
    return utcnow() + _SKEW


def make_queue() -> PersistentJobQueue[IntegrationJob]:
    sync = os.environ.get("MJQ_DOCTOR_SYNC_CLOCK", "1") != "0"
    return create_job_queue(job_model=IntegrationJob, config={"sync_clock": sync}, clock=_skewed)
