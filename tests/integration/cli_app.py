"""An app module for the CLI tests: ``--app integration.cli_app:make_queue``.

A factory, so every CLI run (in-process or not) gets a fresh queue whose
worker options do not leak into the next test. It connects from
``MONGODB_URI`` and ``MJQ_TEST_DB`` unless the test session already did.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import mongoengine
from mongoengine.connection import ConnectionFailure

from mongo_job_queue import FailJob, PersistentJobQueue, create_job_queue

from .models import ALIAS, IntegrationJob

try:
    mongoengine.get_connection(ALIAS)
except ConnectionFailure:
    mongoengine.connect(
        db=os.environ["MJQ_TEST_DB"], host=os.environ["MONGODB_URI"], alias=ALIAS, uuidRepresentation="standard"
    )


def make_queue() -> PersistentJobQueue[IntegrationJob]:
    queue = create_job_queue(
        job_model=IntegrationJob,
        config={"poll_interval_base_ms": 20, "poll_interval_max_ms": 100, "retry_delay_ms": 50, "concurrency": 2},
    )

    @queue.handler("ok")
    def ok(job: IntegrationJob) -> dict[str, Any]:
        return {"echo": job.data.get("n")}

    @queue.handler("sleep")
    def sleep(job: IntegrationJob) -> str:
        # Tests wait for this mark: the handler runs (a job merely claimed is handed back by a stop).
        job._get_db()["handlers_started"].insert_one({"job": job.id})
        threading.Event().wait(job.data["ms"] / 1000)
        return "slept"

    @queue.handler("fail")
    def fail(job: IntegrationJob) -> None:
        raise FailJob("always fails")

    return queue


def no_handlers() -> PersistentJobQueue[IntegrationJob]:
    return create_job_queue(job_model=IntegrationJob)


not_a_queue = 42


def with_schedules() -> PersistentJobQueue[IntegrationJob]:
    """The same queue with two schedules, for ``schedules`` and ``worker --no-schedules``."""
    queue = make_queue()
    queue.schedule("often", job_type="ok", every_ms=200, data={"n": 1})
    queue.schedule("nightly", "0 3 * * *", "ok", timezone="Europe/Paris")
    return queue
