"""A process running the same schedules as its siblings, for the multi-process schedule test.

Run as ``python -m integration.schedule_proc URI DB`` with ``tests/`` on
``PYTHONPATH``. It registers two schedules (every 400 ms, and a six-field cron
firing every second), runs a worker until a line arrives on stdin (the test
decides when, by what it sees in the database), stops, and prints one JSON
line: its pid and how many fire times it enqueued and found already enqueued.
Every sibling runs the same code, as every gunicorn worker of an app would.
"""

from __future__ import annotations

import json
import os
import sys

import mongoengine

from mongo_job_queue import create_job_queue

from .models import ALIAS, IntegrationJob


def main(uri: str, db: str) -> int:
    mongoengine.connect(db=db, host=uri, alias=ALIAS, uuidRepresentation="standard")
    queue = create_job_queue(
        job_model=IntegrationJob,
        config={"concurrency": 2, "poll_interval_base_ms": 20, "poll_interval_max_ms": 200},
    )
    queue.register_handler("TICK", lambda job: os.getpid())
    # catch_up="all": a tick that a loaded machine delays past the next fire time enqueues both, so the
    # test can ask that no fire time is lost ("once", the default, would skip the older one by design).
    queue.schedule("fast", job_type="TICK", every_ms=400, data={"kind": "interval"}, catch_up="all")
    queue.schedule("seconds", "* * * * * *", "TICK", {"kind": "cron"}, catch_up="all")
    queue.start_polling()
    print("ready", flush=True)
    sys.stdin.readline()  # run until the test says stop
    stopped = queue.stop(timeout=30)
    stats = {"pid": os.getpid(), "enqueued": queue.scheduler.enqueued, "duplicates": queue.scheduler.duplicates}
    print(json.dumps(stats), flush=True)
    return 0 if stopped else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
