"""A process holding a lock, for the SIGSTOP scenario: it acquires, then writes fenced on command.

``python -m reliability.lock_holder URI DB BACKEND PREFIX KEY TTL_MS`` with
``tests/`` on ``PYTHONPATH``; BACKEND is ``mongodb`` or ``redis`` (PREFIX is
its key prefix). It prints ``token N`` once it holds the lock, then for each
``write BODY`` line on stdin makes the documented fenced write of BODY to
the ``fenced_target`` document ``report`` and prints ``applied`` or
``refused``, followed by whether the lease is still ``held`` or ``lost``.
"""

from __future__ import annotations

import sys

import mongoengine
from integration.models import ALIAS, IntegrationJob
from pymongo import MongoClient

from mongo_job_queue import create_job_queue


def main(uri: str, db: str, backend_name: str, prefix: str, key: str, ttl_ms: int) -> int:
    mongoengine.connect(db=db, host=uri, alias=ALIAS, uuidRepresentation="standard")
    queue = create_job_queue(job_model=IntegrationJob)
    backend = queue.locks
    if backend_name == "redis":
        import redis

        from mongo_job_queue.contrib.redis import RedisLocks

        backend = RedisLocks(redis.Redis(host="127.0.0.1", port=6379), queue, prefix=prefix)
    target = MongoClient(uri)[db]["fenced_target"]
    with queue.lock(key, ttl_ms=ttl_ms, backend=backend) as lease:
        print(f"token {lease.token}", flush=True)
        for line in sys.stdin:
            command, _, body = line.strip().partition(" ")
            if command != "write":
                break
            # The pattern of docs/locks.rst: the write names the token; an older one matches nothing.
            result = target.update_one(
                {"_id": "report", "fence": {"$lt": lease.token}}, {"$set": {"body": body, "fence": lease.token}}
            )
            print("applied" if result.matched_count else "refused", "held" if lease.held else "lost", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])))
