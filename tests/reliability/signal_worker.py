"""A worker process run through ``run_worker`` for the signal scenarios.

``python -m reliability.signal_worker URI DB CONCURRENCY STOP_TIMEOUT_S``
with ``tests/`` on ``PYTHONPATH``. Jobs of type ``SLEEP`` work for
``data.sleep_ms`` milliseconds; each records its start in the ``started``
collection first, so a test can tell a running handler from a job that was
only claimed (a claimed, unstarted job is handed back on stop, by design).
Jobs of type ``SPIN`` never return; they append a timestamp to the file
``data.file`` every 10 ms for as long as the process can run them.
It exits with ``run_worker``'s exit code.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import mongoengine
from integration.models import ALIAS, IntegrationJob
from pymongo import MongoClient

from mongo_job_queue import create_job_queue


def main(uri: str, db: str, concurrency: int, stop_timeout: float) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    mongoengine.connect(db=db, host=uri, alias=ALIAS, uuidRepresentation="standard")
    queue = create_job_queue(
        job_model=IntegrationJob,
        config={"concurrency": concurrency, "poll_interval_base_ms": 20, "poll_interval_max_ms": 100},
    )

    started = MongoClient(uri)[db]["started"]

    @queue.handler("SLEEP")
    def sleep(job: IntegrationJob) -> str:
        started.insert_one({"job_id": job.id})
        threading.Event().wait(job.data["sleep_ms"] / 1000)
        return "finished"

    @queue.handler("SPIN")
    def spin(job: IntegrationJob) -> None:
        # Never returns: appends a timestamp to data.file every 10 ms for as
        # long as this process can still run it (through interpreter exit).
        started.insert_one({"job_id": job.id})
        with open(job.data["file"], "a", buffering=1) as ticks:
            while True:
                ticks.write(f"{time.time():.3f}\n")
                time.sleep(0.01)

    return queue.run_worker(stop_timeout=stop_timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
