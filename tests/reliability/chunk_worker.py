"""A worker process with a batch handler that never returns, for the chunk kill test.

``python -m reliability.chunk_worker URI DB`` with ``tests/`` on
``PYTHONPATH``. The ``CHUNK`` batch handler records each call (the job ids
and attempts of its chunk) in the ``chunks`` collection, then blocks, so the
test can SIGKILL the process in the middle of the chunk.
"""

from __future__ import annotations

import sys
import threading
import time

import mongoengine
from integration.models import ALIAS, IntegrationJob
from pymongo import MongoClient

from mongo_job_queue import create_job_queue

TIMINGS = {
    "lease_ms": 1_500,
    "heartbeat_interval_ms": 300,
    "sweep_interval_ms": 200,
    "poll_interval_base_ms": 20,
    "poll_interval_max_ms": 200,
}


def main(uri: str, db: str) -> int:
    mongoengine.connect(db=db, host=uri, alias=ALIAS, uuidRepresentation="standard")
    chunks = MongoClient(uri)[db]["chunks"]
    queue = create_job_queue(job_model=IntegrationJob, config={**TIMINGS, "worker_id": "victim"})

    def never_returns(jobs: list[IntegrationJob]) -> None:
        chunks.insert_one({"ids": [j.id for j in jobs], "attempts": [j.attempts for j in jobs]})
        threading.Event().wait()

    queue.register_batch_handler("CHUNK", never_returns, max_size=10, max_wait_ms=300)
    queue.start_polling()
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
