"""A stateful, property-based test: random interleavings of everything workers do, checked after every step.

Hypothesis drives three in-process workers (:class:`PersistentJobQueue`
objects on one job model, over the wire server) one deterministic step at
a time: enqueue, ``enqueue_many`` and unique enqueue; claim (one job or a
batch) and hold the run; heartbeat a held run; let leases expire by moving
the injected clock that every worker shares; sweep expired leases; finish a
held run with its handler completing, failing, reporting progress or being
cancelled; ``run_once``; cancel; a real start and stop of one worker's
threads; and ``failCommand`` failpoints on the claim (``findAndModify``,
``update``), the heartbeat and completion (``update``) and reads
(``find``), answering a transient error, a hard rejection, or a
write-concern error on a write that applied (``insert`` too). After every step it checks:

* no two runs believe they hold a live lease on one job (a run believes so
  until the expiry its last successful claim or heartbeat wrote, unless it
  was told the lease was lost);
* no completion is written by a stale token: a run that no longer owns its
  job changes nothing when it finishes, and a completed job's result comes
  from the run that owns its final token;
* attempts stay within policy: at most ``max_retries + 1`` handler runs per
  job, never two with one token;
* at most one unfinished job per unique key;
* no thread died (``threading.excepthook``), and a stopped worker leaves no
  thread behind.

At the end of each example (teardown) the faults stop and the workers drive
every job to a final state, which must then hold for all of them.

Examples are reproducible: no free-running threads except inside the
start/stop step (which runs with no failpoint armed), time moves only when a
step moves it, retry delays are fixed, and what a step draws never depends
on what the database answered (steps pick jobs and runs by index). The default suite
runs a few examples; ``MJQ_STATEFUL_EXAMPLES=500`` runs that many (and
``MJQ_STATEFUL_STEPS`` sets the steps per example).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from helpers import wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from integration.models import APP_NAME, IntegrationJob
from pymongo.errors import OperationFailure
from tenacity import wait_fixed

from mongo_job_queue import create_job_queue
from mongo_job_queue.clock import utcnow
from mongo_job_queue.store import ClaimedJob

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MJQ_STATEFUL_EXAMPLES", "40"))
STEPS = int(os.environ.get("MJQ_STATEFUL_STEPS", "40"))
WORKERS = 3
LEASE_MS = 10_000
CONFIG: dict[str, Any] = {
    "lease_ms": LEASE_MS,
    "heartbeat_interval_ms": 2_000,
    "sweep_interval_ms": 1_000,
    "retry_delay_ms": 1_000,
    "retry_max_delay_ms": 4_000,
    "max_retries": 2,
    "concurrency": 2,
    "poll_interval_base_ms": 20,
    "poll_interval_max_ms": 100,
    "max_error_history": 50,
    # The injected clock is the only clock: no correction from the server's.
    "sync_clock": False,
    # A change-stream read holds stop() for up to its max await (issue 11, item 9).
    "change_stream_wakeups": False,
}
FINAL = ("completed", "failed", "cancelled")
#: Transient server errors a failpoint answers with (no server-state change, so no rediscovery wait).
TRANSIENT_CODES = (89, 9001, 262)
#: A rejection no retry can help (BadValue): the step that meets it fails, and nothing may be lost by it.
HARD_CODE = 2
WRITE_CONCERN_ERROR = {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out"}
BEHAVIOURS = ("complete", "fail", "progress", "cancel_self")
#: What the examples exercised, printed at the end (``pytest -s``): a test that checks nothing passes too.
STATS: Counter[str] = Counter()

settings.register_profile(
    "mjq-stateful",
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its reproduction
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


class FakeClock:
    """The workers' shared injected clock (naive UTC); only :meth:`advance` moves it."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += timedelta(milliseconds=ms)


@dataclass
class Run:
    """One claim held by the test as a running handler would hold it."""

    worker: int
    claimed: ClaimedJob
    believed_until: datetime
    lost: bool = False
    finished: bool = False

    @property
    def key(self) -> tuple[ObjectId, str]:
        return (self.claimed.id, self.claimed.token)


@dataclass
class Execution:
    job_id: ObjectId
    token: str
    attempt: int
    worker: str


@dataclass
class World:
    """What the machine's steps share with the handlers (which run inside the steps)."""

    behaviour: dict[tuple[ObjectId, str], str] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    thread_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class HandlerFailed(RuntimeError):
    """The handler's failure on purpose."""


def make_handler(world: World, worker_id: str) -> Any:
    def handle(job: Any) -> dict[str, Any]:
        key = (job.pk, job.lease_token)
        with world.lock:
            world.executions.append(Execution(job.pk, job.lease_token, int(job.attempts), worker_id))
            behaviour = world.behaviour.get(key, "complete")
        if behaviour == "fail":
            raise HandlerFailed(f"attempt {job.attempts} fails on purpose")
        if behaviour == "progress":
            job.report_progress(50, "half way")  # raises if the lease is gone or a cancel was requested
        if behaviour == "cancel_self":
            job.report_progress(10)
            if job.is_cancel_requested():
                raise RuntimeError("unreachable: report_progress raises JobCancelled")
        return {"token": job.lease_token, "attempt": int(job.attempts)}

    return handle


class QueueMachine(RuleBasedStateMachine):
    """Several workers over one collection, stepped by Hypothesis."""

    def __init__(self, raw_db: Any, world: World) -> None:
        super().__init__()
        self.db = raw_db
        self.world = world
        world.behaviour.clear()
        world.executions.clear()
        # Fresh collections, as a new user's first deploy: no ensure_indexes() here.
        IntegrationJob.drop_collection()
        IntegrationJob._get_db().drop_collection(f"{IntegrationJob._get_collection_name()}_control")
        self._failpoint("off")
        self.clock = FakeClock()
        self.queues = []
        for i in range(WORKERS):
            queue = create_job_queue(
                job_model=IntegrationJob,
                clock=self.clock,
                sleep=lambda _s: None,  # retries of transient faults without waiting
                config={**CONFIG, "worker_id": f"w{i}"},
            )
            # A fixed retry delay: the default's random jitter would make examples irreproducible.
            queue.register_handler("T", make_handler(world, f"w{i}"), wait=wait_fixed(1))
            self.queues.append(queue)
        self.held: dict[tuple[ObjectId, str], Run] = {}
        # Steps pick jobs and runs by index into these lists, never from Hypothesis
        # bundles: what a step draws must not depend on what the database answered.
        self.job_ids: list[ObjectId] = []
        self.open_runs: list[Run] = []
        self.max_retries: dict[ObjectId, int] = {}
        self.steps = 0

    # -- helpers --------------------------------------------------------------

    @property
    def coll(self) -> Any:
        return self.db[IntegrationJob._get_collection_name()]

    def _failpoint(self, mode: Any, **data: Any) -> None:
        self.db.client.admin.command(
            "configureFailPoint", "failCommand", mode=mode, data={"appName": APP_NAME, **data} if data else {}
        )

    def _doc(self, job_id: ObjectId) -> dict[str, Any] | None:
        return self.coll.find_one({"_id": job_id})

    def _track(self, jobs: list[Any]) -> None:
        for job in jobs:
            self.max_retries[job.pk] = int(job.max_retries)
            if job.pk not in self.job_ids:
                self.job_ids.append(job.pk)

    def _lib(self, call: Any) -> Any:
        """A library call; an injected hard fault may fail it (None then), any other error fails the test."""
        try:
            return call()
        except OperationFailure as exc:
            if exc.code != HARD_CODE:
                raise
            STATS["steps failed by a hard fault"] += 1
            return None

    def _run(self, index: int) -> Run | None:
        self.open_runs = [r for r in self.open_runs if not r.finished]
        return self.open_runs[index % len(self.open_runs)] if self.open_runs else None

    def _hold(self, worker: int, claimed: list[ClaimedJob]) -> list[Run]:
        runs = [Run(worker, c, c.doc["lease_expires_at"]) for c in claimed]
        for run in runs:
            self.held[run.key] = run
            self.open_runs.append(run)
            self.max_retries.setdefault(run.claimed.id, int(run.claimed.doc["max_retries"]))
        return runs

    # -- enqueue --------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["one", "many", "unique"]),
        delay=st.sampled_from([None, None, 0, 5_000]),
        retries=st.sampled_from([None, 0, 1, 2]),
        n=st.integers(1, 3),
        key=st.sampled_from(["u1", "u2"]),
        window=st.sampled_from([None, 5_000]),
        worker=st.integers(0, WORKERS - 1),
    )
    def enqueue(
        self, kind: str, delay: int | None, retries: int | None, n: int, key: str, window: int | None, worker: int
    ) -> None:
        queue = self.queues[worker]
        STATS["enqueue " + kind] += 1
        if kind == "many":
            specs = [{"job_type": "T", "data": {"i": i}, "delay_ms": delay, "max_retries": retries} for i in range(n)]
            self._track(queue.enqueue_many(specs))
            return
        if kind == "unique":
            holder = self.coll.find_one({"unique_key": key})
            held = holder is not None and (
                holder["status"] not in FINAL or (holder.get("unique_until") or self.clock.now) > self.clock.now
            )
            job = self._lib(
                lambda: queue.enqueue("T", {"key": key}, unique_key=key, unique_for_ms=window, max_retries=retries)
            )
            if job is None:
                return  # a hard fault on the read of the key's holder: nothing was inserted
            if held:
                assert holder is not None
                assert job.pk == holder["_id"], f"unique enqueue of {key!r} made a second job beside {holder['_id']}"
            else:
                assert holder is None or job.pk != holder["_id"], f"unique key {key!r} was not released"
            self._track([job])
            return
        self._track([queue.enqueue("T", {"n": 1}, delay_ms=delay, max_retries=retries)])

    # -- claim, heartbeat, expiry, sweep ---------------------------------------

    @rule(worker=st.integers(0, WORKERS - 1), batch=st.sampled_from([1, 2, 3]))
    def claim(self, worker: int, batch: int) -> None:
        w = self.queues[worker].worker
        STATS["claim attempts"] += 1
        claimed = self._lib(lambda: w.claim_some(batch) if batch > 1 else [w.claim_one()]) or []
        claimed = [c for c in claimed if c is not None]
        runs = self._hold(worker, claimed)
        STATS["claimed"] += len(runs)
        for run in runs:
            doc = self._doc(run.claimed.id)
            assert doc is not None and doc["status"] == "processing" and doc["lease_token"] == run.claimed.token

    @rule(pick=st.integers(0, 7))
    def heartbeat(self, pick: int) -> None:
        run = self._run(pick)
        if run is None:
            return
        store = self.queues[run.worker].store
        beat = self._lib(lambda: store.jobs.heartbeat({run.claimed.id: run.claimed.token}))
        if beat is None:
            return
        doc = self._doc(run.claimed.id)
        owns = doc is not None and doc.get("lease_token") == run.claimed.token and doc["status"] == "processing"
        if run.claimed.id in beat.lost:
            assert not owns, "a heartbeat reported a lease lost that the run still holds"
            run.lost = True
            STATS["heartbeat found the lease lost"] += 1
        else:
            assert owns, "a heartbeat renewed (or claimed to renew) a lease the run does not hold"
            run.believed_until = self.clock.now + timedelta(milliseconds=LEASE_MS)
            STATS["heartbeat renewed"] += 1

    @rule(ms=st.sampled_from([1_000, LEASE_MS // 2, LEASE_MS + 1]))
    def time_passes(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule(worker=st.integers(0, WORKERS - 1), wait_out_leases=st.booleans())
    def sweep(self, worker: int, wait_out_leases: bool) -> None:
        if wait_out_leases:
            self.clock.advance(LEASE_MS + 1)
        before = {d["_id"]: d for d in self.coll.find({"status": "processing"})}
        counts = self._lib(self.queues[worker].recover_orphans)
        STATS["swept"] += sum(counts or ())
        for job_id, old in before.items():
            doc = self._doc(job_id)
            if doc is not None and doc["status"] != "processing":
                assert old["lease_expires_at"] < self.clock.now, f"the sweep took job {job_id} with a live lease"

    # -- finishing runs -------------------------------------------------------

    @rule(pick=st.integers(0, 7), behaviour=st.sampled_from(BEHAVIOURS))
    def finish(self, pick: int, behaviour: str) -> None:
        if self._run(pick) is None:
            # Nothing held: claim one first. (A precondition on held runs would make what
            # Hypothesis draws depend on what the database answered.)
            self.claim(pick % WORKERS, 1)
        run = self._run(pick)
        if run is None:
            return
        before = self._doc(run.claimed.id)
        owned = before is not None and before.get("lease_token") == run.claimed.token
        owned = owned and before is not None and before["status"] == "processing"
        self.world.behaviour[run.key] = behaviour
        STATS[f"finished {'owned' if owned else 'stale'} run: {behaviour}"] += 1
        done = self._lib(lambda: self.queues[run.worker].worker.process(run.claimed) or True)
        run.finished = True
        after = self._doc(run.claimed.id)
        if not owned:
            # A stale run's outcome, whatever it is, is fenced: it changes nothing.
            fields = ("status", "lease_token", "attempts", "result", "run_at", "errors")
            assert before is not None and after is not None
            changed = [f for f in fields if before.get(f) != after.get(f)]
            assert not changed, f"a run that lost its lease changed {changed} of job {run.claimed.id}"
        elif behaviour == "complete" and done:
            assert after is not None and after["status"] == "completed", f"an owned run did not complete: {after}"

    # A whole claim-and-run in one step drains what the finer steps would interleave on: now and then.
    @precondition(lambda self: self.steps % 4 == 2)
    @rule(worker=st.integers(0, WORKERS - 1))
    def run_once(self, worker: int) -> None:
        STATS["run_once"] += 1
        self._lib(self.queues[worker].run_once)

    @rule(pick=st.integers(0, 7), percent=st.integers(0, 100))
    def progress(self, pick: int, percent: int) -> None:
        run = self._run(pick)
        if run is None:
            return
        store = self.queues[run.worker].store
        progress = {"percent": percent, "message": None, "at": self.clock.now}
        outcome = self._lib(lambda: ("written", store.jobs.write_progress(run.claimed, progress)))
        if outcome is None:
            return
        outcome = outcome[1]
        doc = self._doc(run.claimed.id)
        owns = doc is not None and doc.get("lease_token") == run.claimed.token and doc["status"] == "processing"
        assert (outcome is not None) == owns, f"progress of a run {'holding' if owns else 'without'} its lease"

    @precondition(lambda self: self.steps % 4 == 0)
    @rule(pick=st.integers(0, 15), worker=st.integers(0, WORKERS - 1))
    def cancel(self, pick: int, worker: int) -> None:
        if not self.job_ids:
            return
        job = self.job_ids[pick % len(self.job_ids)]
        before = self._doc(job)
        answered = self._lib(lambda: self.queues[worker].cancel_job(job))
        if answered is None:
            return
        assert answered == (before is not None and before["status"] in ("pending", "processing"))

    # -- start and stop -------------------------------------------------------

    # Real threads are slow and drain the queue: now and then only.
    @precondition(lambda self: self.steps % 10 == 9)
    @rule(worker=st.integers(0, WORKERS - 1))
    def start_and_stop(self, worker: int) -> None:
        queue = self.queues[worker]
        # Background threads would consume an armed failpoint in no fixed order, and the
        # example would not replay: the threaded worker runs fault-free.
        self._failpoint("off")
        # The threads this start began are the ones its stop answers for: a queue
        # thread of anything else in the process (an earlier test, an earlier
        # example's teardown) is not this worker's, and waiting on it is no check.
        before = set(threading.enumerate())
        queue.start_polling()
        due = {"status": "pending", "run_at": {"$lte": self.clock.now}}
        wait_until(lambda: self.coll.count_documents(due) == 0, timeout=15, what="the started worker to run due jobs")
        assert queue.stop(timeout=15), "stop() timed out with no job left running"
        STATS["started and stopped"] += 1
        assert not queue.running

        def left() -> list[str]:
            # Every queue thread begun since, and the worker's heartbeat even if an earlier start began it.
            mine = [t for t in threading.enumerate() if t not in before and t.name.startswith("mjq-")]
            keeper = queue.worker.keeper.thread
            return [t.name for t in {*mine, *([keeper] if keeper is not None else [])} if t.is_alive()]

        try:
            wait_until(lambda: not left(), timeout=10, what=f"the threads of stopped worker w{worker} to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {left()}") from None

    # -- faults -----------------------------------------------------------------

    @precondition(lambda self: self.steps % 3 == 0)
    @rule(
        commands=st.sampled_from([["findAndModify"], ["update"], ["find"], ["findAndModify", "update", "find"]]),
        times=st.integers(1, 3),
        code=st.sampled_from([*TRANSIENT_CODES, HARD_CODE]),
    )
    def fault(self, commands: list[str], times: int, code: int) -> None:
        self._failpoint({"times": times}, failCommands=commands, errorCode=code)
        STATS["faults armed"] += 1

    @precondition(lambda self: self.steps % 3 == 1)
    @rule(commands=st.sampled_from([["insert"], ["update"], ["findAndModify"]]), times=st.integers(1, 3))
    def write_concern_fault(self, commands: list[str], times: int) -> None:
        """The write applies, but its reply carries a writeConcernError: ambiguous, so retried, never a rejection."""
        self._failpoint({"times": times}, failCommands=commands, writeConcernError=WRITE_CONCERN_ERROR)
        STATS["write-concern faults armed"] += 1

    # -- invariants -------------------------------------------------------------

    @invariant()
    def one_live_lease_per_job(self) -> None:
        self.steps += 1
        STATS["steps"] += 1
        live: dict[ObjectId, list[Run]] = {}
        for run in self.held.values():
            if not run.finished and not run.lost and run.believed_until > self.clock.now:
                live.setdefault(run.claimed.id, []).append(run)
        double = {job: [r.worker for r in rs] for job, rs in live.items() if len(rs) > 1}
        assert not double, f"two runs believe they hold a live lease: {double}"

    @invariant()
    def completions_belong_to_the_final_token(self) -> None:
        for doc in self.coll.find({"status": "completed", "result": {"$ne": None}}):
            result = doc["result"]
            assert result["token"] == doc.get("lease_token"), f"job {doc['_id']} completed by a stale token"
            assert result["attempt"] == doc["attempts"]

    @invariant()
    def attempts_within_policy(self) -> None:
        with self.world.lock:
            executions = list(self.world.executions)
        tokens = [(e.job_id, e.token) for e in executions]
        assert len(tokens) == len(set(tokens)), "two handler runs with one lease token"
        per_job: dict[ObjectId, int] = {}
        for e in executions:
            per_job[e.job_id] = per_job.get(e.job_id, 0) + 1
        for job_id, n in per_job.items():
            allowed = self.max_retries.get(job_id, CONFIG["max_retries"]) + 1
            assert n <= allowed, f"job {job_id} ran {n} times, more than max_retries + 1 = {allowed}"
        for doc in self.coll.find({}, {"attempts": 1, "max_retries": 1}):
            assert doc["attempts"] <= doc["max_retries"] + 1, f"job {doc['_id']} claimed {doc['attempts']} times"

    @invariant()
    def one_unfinished_job_per_unique_key(self) -> None:
        keys: dict[str, int] = {}
        for doc in self.coll.find({"unique_key": {"$exists": True}, "status": {"$nin": list(FINAL)}}):
            keys[doc["unique_key"]] = keys.get(doc["unique_key"], 0) + 1
        assert all(n == 1 for n in keys.values()), f"unfinished jobs per unique key: {keys}"

    @invariant()
    def processing_jobs_are_leased(self) -> None:
        for doc in self.coll.find({"status": "processing"}):
            assert doc.get("lease_token") and doc.get("lease_expires_at"), f"job {doc['_id']} processing, no lease"

    @invariant()
    def no_thread_died(self) -> None:
        assert not self.world.thread_errors, f"a thread died: {self.world.thread_errors}"

    # -- the end: faults stop, every job reaches a final state -------------------

    def teardown(self) -> None:
        try:
            self._failpoint("off")
            queue = self.queues[0]
            for _ in range(4 * (CONFIG["max_retries"] + 2)):
                if not self.coll.count_documents({"status": {"$nin": list(FINAL)}}):
                    break
                self.clock.advance(LEASE_MS + CONFIG["retry_max_delay_ms"] + 1)
                queue.recover_orphans()
                queue.drain(max_jobs=500)
            stuck = list(self.coll.find({"status": {"$nin": list(FINAL)}}, {"status": 1, "attempts": 1}))
            assert not stuck, f"jobs not final once the faults stopped: {stuck}"
            for doc in self.coll.find({}, {"status": 1}):
                STATS[f"ended {doc['status']}"] += 1
            self.attempts_within_policy()
            self.completions_belong_to_the_final_token()
            self.no_thread_died()
        finally:
            for q in self.queues:
                q.stop(timeout=10)


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        world.thread_errors.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")
        previous(args)

    threading.excepthook = hook
    try:
        yield world
    finally:
        threading.excepthook = previous


@pytest.mark.timeout(max(300, EXAMPLES * 4))
def test_random_interleavings_keep_the_queue_invariants(raw_db, job_model, world) -> None:
    STATS.clear()
    run_state_machine_as_test(lambda: QueueMachine(raw_db, world), settings=settings.get_profile("mjq-stateful"))
    print("\nstateful test exercised:", ", ".join(f"{k}: {v}" for k, v in sorted(STATS.items())))
