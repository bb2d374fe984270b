"""``python -m mongo_job_queue demo``: the library's main job, end to end.

It starts the embedded wire server (unless ``MONGODB_URI`` is set), defines a
job model with an extra field, registers handlers (one succeeding, one failing
transiently and succeeding on retry, one always failing), enqueues a few
hundred jobs with priorities and delays, fires a schedule every second in a
queue of its own, runs a worker pool with a live progress line and prints a
table by status and attempts with the throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

import mongoengine
from mongoengine import StringField

from .. import BaseJob, create_job_queue
from .embedded import EmbeddedMongo, EmbeddedServerError

DEMO_ALIAS = "mongo_job_queue_demo"
DEMO_DB = "mongo_job_queue_demo"


class DemoJob(BaseJob):
    """The demo app's job model: BaseJob plus the app's own ``tenant`` field."""

    tenant = StringField(required=True)
    meta = {"collection": "demo_jobs", "db_alias": DEMO_ALIAS}


@contextlib.contextmanager
def _database(out: TextIO) -> Iterator[str]:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        print(f"using MONGODB_URI={uri}", file=out)
        yield uri
        return
    print("starting the embedded MongoDB wire server (set MONGODB_URI to use your own)...", file=out)
    with EmbeddedMongo() as server:
        assert server.uri is not None
        yield server.uri


def run_demo(jobs: int = 300, concurrency: int = 8, out: TextIO = sys.stdout, timeout: float = 300.0) -> int:
    """Run the demo; return 0 when every job reached its expected final state."""
    try:
        with _database(out) as uri:
            return _run(uri, jobs, concurrency, out, timeout)
    except EmbeddedServerError as exc:
        print(f"error: {exc}", file=out)
        return 3


def _run(uri: str, jobs: int, concurrency: int, out: TextIO, timeout: float) -> int:
    mongoengine.connect(host=uri, db=DEMO_DB, alias=DEMO_ALIAS, uuidRepresentation="standard")
    try:
        DemoJob.drop_collection()
        DemoJob._get_db().drop_collection("demo_jobs_control")  # schedule state of an earlier run
        queue = create_job_queue(
            job_model=DemoJob,
            config={
                "concurrency": concurrency,
                "max_retries": 3,
                "retry_delay_ms": 200,
                "poll_interval_base_ms": 50,
                "poll_interval_max_ms": 500,
                "lease_ms": 10_000,
                "heartbeat_interval_ms": 2_000,
                "queues": ["default", "maintenance"],
            },
        )
        rng = random.Random(7)

        @queue.handler("resize_image")
        def resize_image(job: DemoJob) -> dict[str, Any]:
            time.sleep(rng.uniform(0.001, 0.01))  # stands in for real work
            return {"thumbnail": f"{job.data['image']}.thumb.jpg"}

        @queue.handler("send_email")
        def send_email(job: DemoJob) -> None:
            # A flaky SMTP server: the first try of every third email fails.
            if job.data["n"] % 3 == 0 and job.attempts == 1:
                raise ConnectionError("SMTP server busy, try again")

        @queue.handler("charge_card", max_retries=2)
        def charge_card(job: DemoJob) -> None:
            raise ValueError(f"card {job.data['card']} declined")

        # Every process running this code would fire it; each second still gets one job.
        @queue.periodic("cleanup", every_ms=1_000, queue="maintenance", tenant="ops")
        def cleanup(job: DemoJob) -> str:
            return f"cleaned up for {job.fire_time:%H:%M:%S}"

        specs: list[dict[str, Any]] = []
        for n in range(jobs):
            data: dict[str, Any]
            if n % 25 == 0:
                kind, data = "charge_card", {"card": f"4000-{n:04d}"}
            elif n % 2:
                kind, data = "resize_image", {"image": f"img{n}"}
            else:
                kind, data = "send_email", {"to": f"user{n}@example.com", "n": n}
            spec: dict[str, Any] = {"job_type": kind, "data": data, "tenant": f"tenant-{n % 4}", "priority": n % 3}
            if n % 10 == 0:
                spec["delay_ms"] = 1_000  # a tenth of the jobs are scheduled a second out
            specs.append(spec)
        started = time.monotonic()
        queue.enqueue_many(specs)
        enqueue_s = time.monotonic() - started
        print(
            f"enqueued {jobs} jobs in {enqueue_s * 1000:.0f} ms (one bulk insert); running {concurrency} threads",
            file=out,
        )

        started = time.monotonic()
        queue.start_polling()
        try:
            counts = _watch(queue, jobs, out, timeout)
        finally:
            queue.stop(timeout=10)
        elapsed = time.monotonic() - started
        _report(jobs, elapsed, out)
        expected_failed = sum(1 for s in specs if s["job_type"] == "charge_card")
        ok = counts.get("completed", 0) == jobs - expected_failed and counts.get("failed", 0) == expected_failed
        print("demo OK" if ok else "demo FAILED: some jobs did not reach their expected state", file=out)
        return 0 if ok else 1
    finally:
        mongoengine.disconnect(alias=DEMO_ALIAS)


def _watch(queue: Any, total: int, out: TextIO, timeout: float) -> dict[str, int]:
    tty = out.isatty()
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while True:
        counts = queue.counts("default")  # the enqueued jobs; the schedule's run in "maintenance"
        done = counts["completed"] + counts["failed"] + counts["cancelled"]
        line = (
            f"{done:>5}/{total} done | pending {counts['pending']:>4} | processing {counts['processing']:>3} | "
            f"completed {counts['completed']:>4} | failed {counts['failed']:>3}"
        )
        now = time.monotonic()
        if tty:
            print("\r" + line, end="", file=out, flush=True)
        elif now - last_print >= 1.0 or done == total:
            print(line, file=out, flush=True)
            last_print = now
        if done == total or now > deadline:
            if tty:
                print(file=out)
            return counts  # type: ignore[no-any-return]
        time.sleep(0.2)


def _report(total: int, elapsed: float, out: TextIO) -> None:
    table: Counter[tuple[str, str, int]] = Counter()
    for doc in DemoJob.objects.only("type", "status", "attempts").as_pymongo():
        table[(doc["type"], doc["status"], doc["attempts"])] += 1
    print(f"\n{'type':<14}{'status':<12}{'attempts':>9}{'jobs':>7}", file=out)
    for (kind, status, attempts), n in sorted(table.items()):
        print(f"{kind:<14}{status:<12}{attempts:>9}{n:>7}", file=out)
    print(f"\n{total} jobs in {elapsed:.1f} s: {total / elapsed:.0f} jobs/s (incl. delays and retry backoff)", file=out)
    fire_times = [doc["fire_time"] for doc in DemoJob.objects(schedule="cleanup").only("fire_time").as_pymongo()]
    print(
        f"schedule 'cleanup' (every 1000 ms): {len(fire_times)} fire time(s), "
        f"{len(set(fire_times))} distinct, one job each",
        file=out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mongo-job-queue demo", description=__doc__)
    parser.add_argument("--jobs", type=int, default=300, help="number of jobs to enqueue (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="handler threads (default 8)")
    parser.add_argument("--verbose", action="store_true", help="show the queue's log lines")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be >= 1")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # The demo's failures are on purpose; keep the progress line readable.
        logging.getLogger("mongo_job_queue").setLevel(logging.CRITICAL)
    return run_demo(args.jobs, args.concurrency)
