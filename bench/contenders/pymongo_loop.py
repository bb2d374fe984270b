"""The limit: a bare pymongo loop doing the least a safe MongoDB queue must do.

Per job, two round trips and nothing else: a claim (``find_one_and_update`` of
the most urgent due pending job, on the same index shape as the library's
claim index, setting a lease) and a completion (``update_one`` fenced by the
lease token). The same documents, the same server, the same number of
threads. No retries, no heartbeat, no validation, no logging: whatever the
library costs above this line is its overhead.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument

from ..metrics import CommandCounter, SteadyWindow
from . import Batch, Contender, Context

COLLECTION = "bench_limit_jobs"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def job_doc(n: int, now: datetime) -> dict[str, Any]:
    """A pending job shaped like the library's, for the same work per document."""
    return {
        "type": "noop",
        "status": "pending",
        "data": {"n": n},
        "queue": "default",
        "priority": 0,
        "run_at": now,
        "attempts": 0,
        "max_retries": 3,
        "created_at": now,
        "updated_at": now,
        "tenant": "acme",
    }


class PymongoLoop(Contender):
    name = "limit[pymongo]"
    kind = "limit"
    wire_bytes_na = ""
    description = "bare pymongo claim (find_one_and_update) + completion (update_one), 2 round trips per job"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.counter = CommandCounter()
        self.client: Optional[MongoClient[dict[str, Any]]] = None
        self.concurrency = 1
        self.lock = threading.Lock()
        self.started = 0
        self.steady: Optional[SteadyWindow] = None
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    @property
    def coll(self) -> Any:
        assert self.client is not None
        return self.client[self.ctx.db_name][COLLECTION]

    def prepare(self) -> None:
        self.client = MongoClient(self.ctx.uri, event_listeners=[self.counter])
        self.coll.create_index(
            [("status", ASCENDING), ("queue", ASCENDING), ("type", ASCENDING), ("priority", DESCENDING), ("run_at", 1)]
        )
        import pymongo

        self.versions["pymongo"] = pymongo.version

    def start(self, concurrency: int) -> None:
        self.concurrency = concurrency

    def fill(self, jobs: int) -> None:
        now = _now()
        self.coll.insert_many([job_doc(n, now) for n in range(jobs)])

    def _work(self, done: list[int]) -> None:
        coll, ran = self.coll, 0
        while not self.stopping.is_set():
            now = _now()
            token = uuid.uuid4().hex
            due = {
                "status": "pending",
                "queue": {"$in": ["default"]},
                "type": {"$in": ["noop"]},
                "run_at": {"$lte": now},
            }
            doc = coll.find_one_and_update(
                due,
                {
                    "$set": {
                        "status": "processing",
                        "lease_token": token,
                        "lease_expires_at": now + timedelta(seconds=60),
                        "started_at": now,
                        "updated_at": now,
                    },
                    "$inc": {"attempts": 1},
                },
                sort=[("priority", DESCENDING), ("run_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            with self.lock:
                self.started += 1
                if self.steady is not None:
                    self.steady.at(self.started)
            finished = _now()
            coll.update_one(
                {"_id": doc["_id"], "lease_token": token, "status": "processing"},
                {
                    "$set": {"status": "completed", "finished_at": finished, "updated_at": finished},
                    "$unset": {"lease_expires_at": ""},
                },
            )
            ran += 1
        done.append(ran)

    def drain(self, jobs: int) -> Batch:
        done: list[int] = []
        self.threads = threads = [
            threading.Thread(target=self._work, args=(done,), daemon=True) for _ in range(self.concurrency)
        ]
        self.started, self.steady = 0, SteadyWindow(self.counter, jobs)
        self.counter.reset()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.ctx.timeout_s)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        server_end = self.ctx.server_cpu()
        if sum(done) != jobs:
            raise RuntimeError(f"the loop ran {sum(done)} of {jobs} jobs")
        commands, steady = self.counter.snapshot(), self.steady.result()
        return Batch(jobs, seconds, cpu, commands, steady, self.counter.wire_bytes(), server_cpu_end=server_end)

    def clear(self) -> None:
        self.coll.delete_many({})

    def enqueue(self, jobs: int, *, bulk: bool) -> float:
        now = _now()
        docs = [job_doc(n, now) for n in range(jobs)]
        t0 = time.perf_counter()
        if bulk:
            self.coll.insert_many(docs)
        else:
            for doc in docs:
                self.coll.insert_one(doc)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.stopping.set()  # e.g. SIGTERM during a drain: let the loops finish their round trip first
        for t in self.threads:
            t.join(30)
        if self.client is not None:
            self.client.close()
            self.client = None
