"""A worker process for the reliability scenarios.

Run with ``tests/`` on ``PYTHONPATH`` (the :class:`~reliability.harness.Fleet`
does it for you)::

    python -m reliability.worker --uri URI --db DB [--worker-id W] [--concurrency N]
        [--lease-ms MS] [--heartbeat-ms MS] [--sweep-ms MS] [--poll-base-ms MS] [--poll-max-ms MS]
        [--retry-delay-ms MS] [--max-retries N] [--types A,B] [--until-done N]
        [--clock-offset-ms MS] [--appname NAME] [--log-level LEVEL] ...

It connects the integration job model (collection ``jobs``) with app name
``--appname``, registers :func:`~reliability.harness.behaviour_handler` for
every job type of ``--types`` (default ``WORK``), so a job's ``data`` picks
what its handler does, records every execution in ``executions``, starts
polling and prints ``ready``. Logs go to stderr.

It runs the library's :func:`~mongo_job_queue.worker.runner.run_worker` loop until
it is killed, until ``--until-done N`` jobs of the collection are completed
or failed (a graceful stop, exit 0), or until SIGTERM/SIGINT (run_worker's
warm shutdown, exit 0; a second signal forces it, exit 1). It exits on
its own (code 3) when its parent dies, so a crashed test run leaves no
worker behind. Every ``--status-interval-ms`` it writes a status document
(``worker_status`` collection, ``_id`` = worker id): pid, live handler
threads, in-flight jobs, running flag.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import mongoengine
from integration.models import ALIAS, IntegrationJob
from pymongo import MongoClient

from mongo_job_queue import create_job_queue
from mongo_job_queue.clock import utcnow
from mongo_job_queue.worker.runner import run_worker

from .harness import FINAL, Recorder, behaviour_handler, handler_threads

log = logging.getLogger("reliability.worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reliability.worker", description=__doc__.split("\n")[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--worker-id", default=f"worker-{os.getpid()}")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--lease-ms", type=int, default=3_000)
    p.add_argument("--heartbeat-ms", type=int, default=500)
    p.add_argument("--sweep-ms", type=int, default=500)
    p.add_argument("--poll-base-ms", type=int, default=20)
    p.add_argument("--poll-max-ms", type=int, default=200)
    p.add_argument("--retry-delay-ms", type=int, default=50)
    p.add_argument("--max-retries", type=int, default=3, help="default for jobs enqueued without max_retries")
    p.add_argument("--max-error-history", type=int, default=50)
    p.add_argument("--types", default="WORK", help="comma-separated job types to handle")
    p.add_argument("--queues", default="default", help="comma-separated queue names to claim from")
    p.add_argument("--until-done", type=int, default=0, help="stop once this many jobs are completed or failed")
    p.add_argument("--clock-offset-ms", type=int, default=0, help="skew the queue's clock (not the recorder's)")
    p.add_argument("--sync-clock", type=int, choices=[0, 1], default=1, help="the queue's sync_clock setting")
    p.add_argument("--appname", default="mjq-reliability-worker")
    p.add_argument("--socket-timeout-ms", type=int, default=0, help="driver socketTimeoutMS (0: none)")
    p.add_argument(
        "--harness-timeout-ms",
        type=int,
        default=0,
        help="socketTimeoutMS of the recorder's and the status writer's clients, not the queue's (0: none)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--status-interval-ms", type=int, default=250)
    p.add_argument("--stop-timeout", type=float, default=30.0)
    p.add_argument("--max-runtime-s", type=float, default=600.0, help="give up (exit 2) after this long")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {args.worker_id} [%(threadName)s] %(name)s: %(message)s",
    )
    parent = os.getppid()
    connect: dict[str, Any] = {"appname": args.appname, "heartbeatFrequencyMS": 500}
    if args.socket_timeout_ms:
        connect["socketTimeoutMS"] = args.socket_timeout_ms
    mongoengine.connect(db=args.db, host=args.uri, alias=ALIAS, uuidRepresentation="standard", **connect)
    recorder = Recorder(args.uri, args.db, timeout_ms=args.harness_timeout_ms or None)
    bounds = {"socketTimeoutMS": args.harness_timeout_ms, "connectTimeoutMS": args.harness_timeout_ms}
    db = MongoClient(args.uri, appname="mjq-reliability-monitor", **(bounds if args.harness_timeout_ms else {}))[
        args.db
    ]

    offset = timedelta(milliseconds=args.clock_offset_ms)
    queue = create_job_queue(
        job_model=IntegrationJob,
        clock=(lambda: utcnow() + offset) if args.clock_offset_ms else utcnow,
        config={
            "worker_id": args.worker_id,
            "concurrency": args.concurrency,
            "lease_ms": args.lease_ms,
            "heartbeat_interval_ms": args.heartbeat_ms,
            "sweep_interval_ms": args.sweep_ms,
            "poll_interval_base_ms": args.poll_base_ms,
            "poll_interval_max_ms": args.poll_max_ms,
            "retry_delay_ms": args.retry_delay_ms,
            "retry_max_delay_ms": max(args.retry_delay_ms, 1_000),
            "max_retries": args.max_retries,
            "max_error_history": args.max_error_history,
            "queues": args.queues.split(","),
            "sync_clock": bool(args.sync_clock),
        },
    )
    # The recorder stamps executions with the queue's own (server-corrected) clock.
    recorder.clock = queue.store.now
    handler = behaviour_handler(recorder, args.worker_id)
    for job_type in args.types.split(","):
        queue.register_handler(job_type, handler)

    def watchdog() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)  # the test run is gone; don't linger
            try:
                db.worker_status.replace_one(
                    {"_id": args.worker_id},
                    {
                        "pid": os.getpid(),
                        "handler_threads": handler_threads(args.worker_id),
                        "inflight": len(queue.worker.table),
                        "running": queue.running,
                        "at": utcnow(),
                    },
                    upsert=True,
                )
            except Exception:
                log.exception("status update failed")
            time.sleep(args.status_interval_ms / 1000)

    deadline = time.monotonic() + args.max_runtime_s
    gave_up = False

    def until() -> bool:
        nonlocal gave_up
        if args.until_done and db.jobs.count_documents({"status": {"$in": list(FINAL)}}) >= args.until_done:
            log.info("%d jobs are final: stopping", args.until_done)
            return True
        if time.monotonic() > deadline:
            log.error("max runtime of %.0fs reached: giving up", args.max_runtime_s)
            gave_up = True
        return gave_up

    queue.start_polling()  # before "ready"; run_worker's own start is then a no-op
    threading.Thread(target=watchdog, name="status", daemon=True).start()
    print("ready", flush=True)
    # The library's foreground loop: SIGTERM/SIGINT stop gracefully, a second one forces.
    code = run_worker(queue, stop_timeout=args.stop_timeout, until=until, check_interval=0.2)
    print(f"stopped: exit code {code}", flush=True)
    recorder.close()
    return 2 if gave_up else code


if __name__ == "__main__":
    sys.exit(main())
