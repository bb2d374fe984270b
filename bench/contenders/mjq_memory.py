"""Worker memory: resident set of a worker process after many jobs (a subprocess of the bench).

Run as ``python -m bench.contenders.mjq_memory``. This process is a plain
app: it connects, starts the worker with ``start_polling()``, and feeds it
chunks of jobs with ``enqueue_many``, waiting for each chunk to complete and
deleting the completed jobs before the next one (the embedded server's claim
scans the whole collection, so a growing collection would only measure the
server). At each checkpoint it prints one JSON line with its RSS. Growth
between the checkpoints would be a leak per job (kept exceptions, job
documents, log records); a flat line means none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import mongoengine
from pymongo import MongoClient

from mongo_job_queue import create_job_queue

from ..metrics import rss_mb
from .mjq import ALIAS, BenchJob, _Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.contenders.mjq_memory")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--checkpoints", required=True, help="comma-separated job counts, e.g. 1000,10000")
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--config", default="{}", help="JSON mapping of public config keys")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))

    mongoengine.connect(host=args.uri, db=args.db, alias=ALIAS, uuidRepresentation="standard")
    control = MongoClient(args.uri)
    coll = control[args.db][BenchJob._meta["collection"]]
    coll.delete_many({})
    handler = _Handler()
    queue = create_job_queue(job_model=BenchJob, config=json.loads(args.config))
    queue.register_handler("noop", handler)
    print(json.dumps({"jobs": 0, "rss_mb": round(rss_mb(), 2)}), flush=True)
    queue.start_polling()
    processed = 0
    try:
        while processed < checkpoints[-1]:
            chunk = min(args.chunk, min(c for c in checkpoints if c > processed) - processed)
            handler.arm(chunk)
            queue.enqueue_many([{"job_type": "noop", "data": {"n": n}, "tenant": "acme"} for n in range(chunk)])
            if not handler.done.wait(args.timeout):
                raise TimeoutError(f"chunk of {chunk} jobs not run in {args.timeout:.0f} s")
            deadline = time.monotonic() + args.timeout
            while coll.count_documents({"status": "completed"}) < chunk:
                if time.monotonic() > deadline:
                    raise TimeoutError("completion writes missing")
                time.sleep(0.005)
            coll.delete_many({"status": "completed"})
            processed += chunk
            if processed in checkpoints:
                print(json.dumps({"jobs": processed, "rss_mb": round(rss_mb(), 2)}), flush=True)
    finally:
        queue.stop(timeout=30)
        coll.delete_many({})
        control.close()
        mongoengine.disconnect(alias=ALIAS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
