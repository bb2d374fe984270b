"""Dependencies and workflows over the wire: policies, a diamond, releases racing, lost notices, retention."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from typing import Any

import pytest
from helpers import holds_for, wait_until
from prometheus_client import CollectorRegistry
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from mongo_job_queue import FailJob, InvalidJobError, chain, chord, cli, group
from mongo_job_queue.contrib import prometheus
from mongo_job_queue.store.dependencies import Dependencies

pytestmark = pytest.mark.integration

#: Long enough that no test here is helped by the blocked-job sweep unless it drives it.
NO_SWEEP = {"dependency_sweep_interval_ms": 3_600_000}


def status_of(queue: Any, job: Any) -> str:
    doc = queue.store.admin.get(job.id)
    return "missing" if doc is None else str(doc["status"])


def bare(outcome: dict[str, Any]) -> dict[str, Any]:
    """A copied outcome without the ``finished_at`` that tells which end of its dependency it was."""
    return {k: v for k, v in outcome.items() if k != "finished_at"}


def ended(queue: Any, *jobs: Any) -> bool:
    return all(status_of(queue, job) in ("completed", "failed", "cancelled") for job in jobs)


def test_a_chain_whose_middle_job_fails_cancels_the_tail_and_its_dependents(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    ran: list[str] = []
    queue.register_handler("ok", lambda job: ran.append(job.data["n"]))

    def bad(job: Any) -> None:
        raise FailJob("no")

    queue.register_handler("bad", bad)
    a, b, c, d = (queue.job("ok", {"n": "a"}), queue.job("bad", {"n": "b"}), queue.job("ok", {"n": "c"}),
                  queue.job("ok", {"n": "d"}))  # fmt: skip
    jobs = queue.enqueue_graph(chain(a, b, c, d))
    assert [status_of(queue, j) for j in jobs] == ["blocked", "blocked", "blocked", "pending"]  # dependents first
    queue.start_polling()
    wait_until(lambda: ended(queue, *jobs), timeout=30, what="the chain ended")
    tail = queue.store.admin.get(c.id)
    assert tail is not None and tail["status"] == "cancelled"
    assert tail["last_error"]["type"].endswith("DependencyFailed")
    assert f"dependency {b.id} ended failed" in tail["last_error"]["message"]
    last = queue.store.admin.get(d.id)
    assert last is not None and last["status"] == "cancelled"
    assert f"dependency {c.id} ended cancelled" in last["last_error"]["message"]
    assert ran == ["a"]


def test_the_ignore_policy_runs_the_tail(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    ran: list[str] = []
    queue.register_handler("ok", lambda job: ran.append(job.data["n"]))
    queue.register_handler("bad", lambda job: 1 / 0)
    tail = queue.job("ok", {"n": "tail"}, on_dependency_failure="ignore")
    queue.enqueue_graph(chain(queue.job("bad", {}, max_retries=0), tail))
    queue.start_polling()
    wait_until(lambda: status_of(queue, tail) == "completed", timeout=30, what="the tail ran")
    assert ran == ["tail"]


def test_continue_with_results_shows_the_handler_what_failed_and_what_completed(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    seen: dict[str, Any] = {}
    queue.register_handler("ok", lambda job: {"n": job.data["n"]})
    queue.register_handler("bad", lambda job: 1 / 0)

    def callback(job: Any) -> None:
        seen.update(results=job.dependency_results(), failed=job.failed_dependencies())

    queue.register_handler("callback", callback)
    good, bad = queue.job("ok", {"n": 1}), queue.job("bad", {}, max_retries=0)
    cb = queue.job("callback", {}, on_dependency_failure="continue_with_results")
    queue.enqueue_graph(chord(group(good, bad), cb))
    queue.start_polling()
    wait_until(lambda: status_of(queue, cb) == "completed", timeout=30, what="the callback ran")
    assert seen == {"results": {str(good.id): {"n": 1}}, "failed": {str(bad.id): "failed"}}


def test_a_diamond_runs_each_node_once_after_both_its_parents(make_queue) -> None:
    queue = make_queue(concurrency=4, **NO_SWEEP)
    lock = threading.Lock()
    runs: dict[str, list[tuple[float, float]]] = {}

    def node(job: Any) -> str:
        start = time.monotonic()
        time.sleep(0.05)
        with lock:
            runs.setdefault(job.data["n"], []).append((start, time.monotonic()))
        return str(job.data["n"])

    queue.register_handler("node", node)
    for _ in range(3):
        runs.clear()
        a, b, c, d = (queue.job("node", {"n": n}) for n in "abcd")
        queue.enqueue_graph(chain(a, group(b, c), d))
        queue.start_polling()
        wait_until(lambda: status_of(queue, d) == "completed", timeout=30, what="the diamond ran")  # noqa: B023
        assert sorted(runs) == ["a", "b", "c", "d"] and all(len(r) == 1 for r in runs.values()), runs
        assert runs["b"][0][0] >= runs["a"][0][1] and runs["c"][0][0] >= runs["a"][0][1]
        assert runs["d"][0][0] >= max(runs["b"][0][1], runs["c"][0][1])
        done = queue.get_job(d.id)
        assert done is not None and done.dependency_results() == {str(b.id): "b", str(c.id): "c"}


#: Rounds of the forced race below: 30 took 23 s on a loaded machine.
ROUNDS = 12


def test_two_dependencies_ending_at_once_on_two_workers_release_the_dependent_once(make_queue) -> None:
    one, two = make_queue(concurrency=1, **NO_SWEEP), make_queue(concurrency=1, **NO_SWEEP)
    both_running = threading.Barrier(2, timeout=20)
    releasing = threading.Barrier(2, timeout=20)
    listening = threading.local()
    lock = threading.Lock()
    ran: Counter[str] = Counter()
    released: Counter[str] = Counter()

    def gated(deps: Dependencies) -> None:
        real = deps.try_release

        def try_release(dependent: Any, **kwargs: Any) -> Any:
            if getattr(listening, "on", False):  # a final write's listener, not a sweep or the check after insert
                releasing.wait()  # both final writes' listeners try at the same moment
            got = real(dependent, **kwargs)
            if got is not None:
                with lock:
                    released[str(dependent["_id"])] += 1
            return got

        real_listener = deps._release_dependents_of

        def listener(ended: Any) -> None:
            listening.on = True
            try:
                real_listener(ended)
            finally:
                listening.on = False

        deps.try_release = try_release  # type: ignore[method-assign]
        deps._release_dependents_of = listener  # type: ignore[method-assign]

    for queue in (one, two):
        gated(queue.store.dependencies)
        queue.register_handler("dep", lambda job: both_running.wait())

        def dependent(job: Any) -> None:
            with lock:
                ran[str(job.id)] += 1

        queue.register_handler("dependent", dependent)
    one.start_polling()
    two.start_polling()
    for _ in range(ROUNDS):  # the barriers force the race in every round
        callback = one.job("dependent", {})
        one.enqueue_graph(chord(group(one.job("dep", {}), one.job("dep", {})), callback))
        wait_until(lambda: status_of(one, callback) == "completed", timeout=30, what="the dependent ran")  # noqa: B023
    holds_for(lambda: max(ran.values()) == 1, 0.5, what="no second run")
    assert len(ran) == ROUNDS and set(ran.values()) == {1}
    assert released == Counter({key: 1 for key in ran})


def test_a_lost_notice_is_caught_up_by_the_sweep(make_queue, caplog) -> None:
    queue = make_queue(dependency_sweep_interval_ms=300)
    queue.register_handler("ok", lambda job: "done")
    dependency = queue.enqueue("ok", {})
    dependent = queue.enqueue("ok", {}, depends_on=[dependency])
    assert status_of(queue, dependent) == "blocked"

    def lost(ended: Any) -> None:
        raise RuntimeError("the process died between the final write and its notice")

    queue.store.dependencies._release_dependents_of = lost  # type: ignore[method-assign]
    assert queue.drain() == 1  # only the dependency: the dependent is not claimable
    assert status_of(queue, dependency) == "completed" and status_of(queue, dependent) == "blocked"
    queue.start_polling()  # the maintenance thread's sweep releases it
    wait_until(lambda: status_of(queue, dependent) == "completed", timeout=30, what="swept and run")
    done = queue.get_job(dependent.id)
    assert done is not None and done.dependency_results() == {str(dependency.id): "done"}


def test_a_dependent_enqueued_while_its_dependency_runs_is_released_by_the_final_write(make_queue) -> None:
    # Another process enqueues the dependent: the worker's claimed document of
    # the dependency has no has_dependents flag, and no sweep runs meanwhile.
    worker, producer = make_queue(**NO_SWEEP), make_queue(**NO_SWEEP)
    started, gate = threading.Event(), threading.Event()

    def held(job: Any) -> str:
        started.set()
        assert gate.wait(30)
        return "upstream"

    worker.register_handler("held", held)
    worker.register_handler("after", lambda job: job.dependency_results())
    swept = threading.Event()
    real_sweep = worker.store.dependencies.sweep

    def sweep(now: Any = None) -> int:
        try:
            return real_sweep(now)
        finally:
            swept.set()

    worker.store.dependencies.sweep = sweep  # type: ignore[method-assign]
    dependency = producer.enqueue("held", {})
    worker.start_polling()
    assert started.wait(30) and swept.wait(30)  # its start-up sweep found no blocked job
    assert not worker.store.dependencies.in_use
    dependent = producer.enqueue("after", {}, depends_on=[dependency.id])
    assert status_of(producer, dependent) == "blocked"
    gate.set()
    wait_until(lambda: status_of(worker, dependent) == "completed", timeout=10, what="released without a sweep")
    assert worker.store.admin.get(dependent.id)["result"] == {str(dependency.id): "upstream"}


def test_a_dependency_ending_while_its_dependent_is_inserted_is_caught_by_the_check_after_insert(make_queue) -> None:
    # The dependency ends after the enqueue checked it and before the dependent
    # is stored: its final write finds no dependent; the check after the insert must.
    queue = make_queue(**NO_SWEEP)
    started, gate = threading.Event(), threading.Event()

    def held(job: Any) -> None:
        started.set()
        assert gate.wait(30)

    queue.register_handler("held", held)
    queue.register_handler("after", lambda job: None)
    looked = threading.Event()
    deps = queue.store.dependencies
    real_look = deps._release_dependents_of

    def look(ended: Any) -> None:
        real_look(ended)
        looked.set()

    deps._release_dependents_of = look  # type: ignore[method-assign]
    dependency = queue.enqueue("held", {})
    queue.start_polling()
    assert started.wait(30)
    real_insert = queue.store.jobs.insert

    def insert_after_the_dependency_ended(doc: Any) -> Any:
        gate.set()
        assert looked.wait(10)  # its final write landed and its listener found no dependent
        return real_insert(doc)

    queue.store.jobs.insert = insert_after_the_dependency_ended  # type: ignore[method-assign]
    dependent = queue.enqueue("after", {}, depends_on=[dependency])
    queue.store.jobs.insert = real_insert  # type: ignore[method-assign]
    wait_until(lambda: status_of(queue, dependent) == "completed", timeout=10, what="released at once")


def test_an_ended_dependency_may_be_purged_once_its_outcome_is_copied(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    started, gate = threading.Event(), threading.Event()

    def slow(job: Any) -> str:
        started.set()
        assert gate.wait(60)
        return "slow"

    queue.register_handler("quick", lambda job: {"kept": True})
    queue.register_handler("slow", slow)
    queue.register_handler("after", lambda job: job.dependency_results())
    quick, held = queue.enqueue("quick", {}), queue.enqueue("slow", {})
    dependent = queue.enqueue("after", {}, depends_on=[quick, held])
    queue.start_polling()
    try:

        def copied() -> Any:
            stored = queue.store.admin.get(dependent.id) or {}
            outcome = (stored.get("dependency_outcomes") or {}).get(str(quick.id))
            return started.is_set() and outcome and bare(outcome)

        # The quick one's final write copied its outcome into the waiting dependent.
        assert wait_until(copied, timeout=30, what="quick ended") == {"status": "completed", "result": {"kept": True}}
        assert queue.purge(0) == 1  # the quick dependency: its outcome is in the dependent
    finally:
        gate.set()
    wait_until(lambda: status_of(queue, dependent) == "completed", timeout=30, what="the dependent ran")
    assert queue.store.admin.get(dependent.id)["result"] == {str(quick.id): {"kept": True}, str(held.id): "slow"}


def test_purge_keeps_an_ended_dependency_whose_outcome_no_dependent_copied_yet(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    queue.register_handler("ok", lambda job: 7)
    dependency = queue.enqueue("ok", {})
    other = queue.enqueue("ok", {}, delay_ms=3_600_000)  # never due in this test
    dependent = queue.enqueue("ok", {}, depends_on=[dependency, other])
    queue.store.dependencies._release_dependents_of = lambda ended: None  # type: ignore[method-assign]  # lost
    assert queue.drain() == 1
    assert queue.purge(0) == 0  # the dependent still needs it
    assert status_of(queue, dependency) == "completed"
    queue.store.dependencies.sweep()  # copies the ended one's outcome; the other still runs
    assert queue.purge(0) == 1
    stored = queue.store.admin.get(dependent.id)
    assert stored is not None and stored["status"] == "blocked"
    assert {k: bare(o) for k, o in stored["dependency_outcomes"].items()} == {
        str(dependency.id): {"status": "completed", "result": 7}
    }


def test_the_ttl_index_path_loses_nothing_the_dependent_needs(make_queue) -> None:
    queue = make_queue(retention_completed_ms=1_000, **NO_SWEEP)
    queue.ensure_indexes()
    queue.register_handler("ok", lambda job: {"v": 1})
    dependency = queue.enqueue("ok", {})
    other = queue.enqueue("ok", {}, delay_ms=3_600_000)
    dependent = queue.enqueue("ok", {}, depends_on=[dependency, other])
    assert queue.drain() == 1
    # The TTL monitor may remove the dependency now: its outcome is already in the dependent.
    stored = queue.store.admin.get(dependent.id)
    assert stored is not None
    assert bare(stored["dependency_outcomes"][str(dependency.id)]) == {"status": "completed", "result": {"v": 1}}
    queue.store.collection.delete_one({"_id": dependency.id})  # as the TTL monitor would
    queue.store.collection.update_one({"_id": other.id}, {"$set": {"run_at": queue.store.now()}})
    assert queue.drain() == 2  # the other dependency, then the released dependent
    done = queue.get_job(dependent.id)
    assert done is not None and done.status == "completed"
    assert done.dependency_results() == {str(dependency.id): {"v": 1}, str(other.id): {"v": 1}}


def test_the_admin_surface_shows_blocked_jobs_and_a_workflow(make_queue, job_model) -> None:
    queue = make_queue(**NO_SWEEP)
    upstream = queue.enqueue("ok", {}, delay_ms=3_600_000)
    dependent = queue.enqueue("ok", {}, depends_on=[(upstream, "ignore")])
    assert queue.stats()["default"]["counts"]["blocked"] == 1
    registry = CollectorRegistry()
    prometheus.instrument(queue, registry, cache_seconds=0)
    assert registry.get_sample_value("mongo_job_queue_jobs", {"queue": "default", "status": "blocked"}) == 1

    def run(*argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        assert cli.main(list(argv), out=out, err=err) == 0, err.getvalue()
        return out.getvalue()

    app = "integration.cli_app:make_queue"
    shown = run("jobs", "show", "--app", app, str(dependent.id)).splitlines()
    assert "  status       blocked" in shown and "  depends on   1" in shown
    assert f"    {upstream.id}  pending    on failure: ignore" in shown
    shown = run("jobs", "show", "--app", app, str(upstream.id)).splitlines()
    assert "  dependents   1" in shown and f"    {dependent.id}  blocked    ok" in shown
    header, row = run("stats", "--app", app).splitlines()[:2]
    assert header.split()[1:7] == ["pending", "processing", "completed", "failed", "cancelled", "blocked"]
    assert row.split()[1:7] == ["1", "0", "0", "0", "0", "1"]


@pytest.mark.parametrize("transactions", [True, False])
def test_a_graph_is_inserted_all_or_nothing(make_queue, monkeypatch, transactions) -> None:
    queue = make_queue(**NO_SWEEP)
    queue.store.collection.create_index("organization", unique=True, sparse=True)  # an app's own unique index
    taken = queue.enqueue("ok", {}, organization="taken", delay_ms=3_600_000)
    if not transactions:

        def no_sessions(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise OperationFailure("Transaction numbers are only allowed on a replica set member or mongos", code=20)

        monkeypatch.setattr(MongoClient, "start_session", no_sessions)
    root = queue.job("ok", {}, organization="taken")  # refused by the server, written last
    graph = chain(root, group(queue.job("ok", {}), queue.job("ok", {})), queue.job("ok", {}))
    with pytest.raises(InvalidJobError, match="nothing written" if transactions else "removed again"):
        queue.enqueue_graph(graph)
    assert [d["_id"] for d in queue.store.collection.find({})] == [taken.id]


def test_a_damaged_blocked_job_is_failed_and_never_holds_up_its_siblings(make_queue, caplog) -> None:
    queue = make_queue(**NO_SWEEP)
    queue.register_handler("ok", lambda job: 1)
    upstream = queue.enqueue("ok", {})
    damaged = queue.enqueue("ok", {}, depends_on=[upstream])
    siblings = [queue.enqueue("ok", {}, depends_on=[upstream]) for _ in range(3)]
    queue.store.collection.update_one({"_id": damaged.id}, {"$set": {"dependency_outcomes": 5}})  # a hand edit
    queue.drain()  # the upstream's final write tries every dependent: the damaged one is failed, not raised
    assert [status_of(queue, s) for s in siblings] == ["completed"] * 3
    stored = queue.store.admin.get(damaged.id)
    assert stored is not None and stored["status"] == "failed"
    assert stored["last_error"]["type"] == "mongo_job_queue.errors.MalformedJob"
    assert "dependency_outcomes" in stored["last_error"]["message"]
    # A release the server refuses (not transient) fails that job alone; the sweep goes on past it.
    other = queue.enqueue("ok", {}, delay_ms=3_600_000)
    refused, fine = (queue.enqueue("ok", {}, depends_on=[(other, "ignore")]) for _ in range(2))
    real = queue.store.dependencies.try_release

    def try_release(doc: Any, **kwargs: Any) -> Any:
        if doc["_id"] == refused.id:
            raise OperationFailure("refused", code=2)
        return real(doc, **kwargs)

    queue.store.dependencies.try_release = try_release  # type: ignore[method-assign]
    queue.store.collection.update_one({"_id": other.id}, {"$set": {"status": "cancelled"}})
    assert queue.store.dependencies.sweep() == 2  # the refused one failed, the other released
    assert (status_of(queue, refused), status_of(queue, fine)) == ("failed", "pending")


def test_the_hygiene_sweep_fails_a_blocked_job_with_damaged_dependency_fields(make_queue) -> None:
    from mongo_job_queue.worker.maintenance import Hygiene, Quarantiner

    queue = make_queue(**NO_SWEEP)
    upstream = queue.enqueue("ok", {}, delay_ms=3_600_000)
    damaged = [queue.enqueue("ok", {}, depends_on=[upstream]) for _ in range(3)]
    healthy = queue.enqueue("ok", {}, depends_on=[upstream])
    for job, edit in zip(
        damaged, ({"depends_on": "x"}, {"dependency_policies": 1}, {"dependency_outcomes": []}), strict=True
    ):
        queue.store.collection.update_one({"_id": job.id}, {"$set": edit})
    assert Hygiene(queue.store, Quarantiner(queue.store, queue.hooks)).run_once() == 3
    assert [status_of(queue, j) for j in damaged] == ["failed"] * 3 and status_of(queue, healthy) == "blocked"


def test_a_release_too_large_for_the_dependent_drops_the_results_and_releases_it(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    # A few results copied into a job grown near 16 MiB, not thirty into one that enqueue accepts: every copy
    # rewrites the dependent's whole document, and the embedded server keeps each version while a snapshot
    # sees it (thirty 15 MB versions once stalled it for good, late in a parallel run).
    queue.register_handler("big", lambda job: "x" * (60 * 1024))
    queue.register_handler("after", lambda job: (job.dependency_statuses(), job.dependency_results()))
    upstream = [queue.enqueue("big", {}) for _ in range(4)]
    dependent = queue.enqueue("after", {}, depends_on=upstream)
    queue.store.collection.update_one({"_id": dependent.id}, {"$set": {"data.blob": "y" * 16_550_000}})
    assert queue.drain() == 5  # 4 x 60 KiB copied into a 16.55 MB job: more than 16 MiB
    stored = queue.store.admin.get(dependent.id)
    assert stored is not None and stored["status"] == "completed"
    assert "do not fit" in stored["dependency_results_error"]
    statuses, results = stored["result"]
    assert set(statuses.values()) == {"completed"} and len(statuses) == 4 and results == {}


def test_a_dependency_retried_after_failing_is_judged_by_how_it_ends_again(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    tries = Counter[str]()

    def flaky(job: Any) -> str:
        tries["a"] += 1
        if tries["a"] == 1:
            raise FailJob("first time")
        return "a-ok"

    queue.register_handler("a", flaky)
    queue.register_handler("ok", lambda job: 1)
    queue.register_handler("after", lambda job: (job.dependency_statuses(), job.dependency_results()))
    a, b = queue.enqueue("a", {}), queue.enqueue("ok", {}, delay_ms=3_600_000)
    dependent = queue.enqueue("after", {}, depends_on=[a, b], on_dependency_failure="continue_with_results")
    assert queue.drain() == 1 and status_of(queue, a) == "failed"  # its outcome copied into the dependent
    assert queue.retry_job(a.id)
    queue.store.dependencies.sweep()  # the retried dependency runs again: the dependent waits for it
    assert status_of(queue, dependent) == "blocked"
    assert queue.drain() == 1 and status_of(queue, a) == "completed"
    queue.store.collection.update_one({"_id": b.id}, {"$set": {"run_at": queue.store.now()}})
    assert queue.drain() == 2
    stored = queue.store.admin.get(dependent.id)
    assert stored is not None and stored["status"] == "completed"
    assert stored["result"] == [{str(a.id): "completed", str(b.id): "completed"}, {str(a.id): "a-ok", str(b.id): 1}]


def test_a_dependency_failing_under_cancel_cancels_at_once_without_waiting_for_the_others(make_queue) -> None:
    queue = make_queue(**NO_SWEEP)
    queue.register_handler("bad", lambda job: (_ for _ in ()).throw(FailJob("no")))
    a, b = queue.enqueue("bad", {}), queue.enqueue("ok", {}, delay_ms=3_600_000)
    dependent = queue.enqueue("ok", {}, depends_on=[a, b])
    after = queue.enqueue("ok", {}, depends_on=[dependent])
    assert queue.drain() == 1
    stored = queue.store.admin.get(dependent.id)
    assert stored is not None and stored["status"] == "cancelled" and str(a.id) in stored["last_error"]["message"]
    assert status_of(queue, after) == "cancelled"  # the cascade, as before
    assert status_of(queue, b) == "pending"


@pytest.mark.parametrize("bulk", [False, True])
def test_a_retried_dependent_waits_again_for_its_dependencies(make_queue, bulk) -> None:
    queue = make_queue(**NO_SWEEP)
    ran: list[dict[str, str]] = []
    queue.register_handler("after", lambda job: ran.append(job.dependency_statuses()))
    queue.register_handler("ok", lambda job: 1)
    upstream = queue.enqueue("ok", {}, delay_ms=3_600_000)
    dependent = queue.enqueue("after", {}, depends_on=[upstream])
    plain = queue.enqueue("ok", {}, delay_ms=3_600_000)
    assert queue.cancel_job(dependent.id) and queue.cancel_job(plain.id)
    if bulk:
        assert queue.store.admin.retry_jobs([dependent.id, plain.id]) == 2
    else:
        assert queue.retry_job(dependent.id) and queue.retry_job(plain.id)
    assert (status_of(queue, dependent), status_of(queue, plain)) == ("blocked", "pending")
    assert queue.drain() == 1 and not ran  # the plain job only: the dependent waits for its dependency
    queue.store.collection.update_one({"_id": upstream.id}, {"$set": {"run_at": queue.store.now()}})
    assert queue.drain() == 2 and ran == [{str(upstream.id): "completed"}]
    # Retried once its dependencies all ended, the re-check after the retry releases it at once.
    assert queue.cancel_job(upstream.id) is False  # completed: nothing to cancel
    queue.store.collection.update_one({"_id": dependent.id}, {"$set": {"status": "failed"}})
    assert queue.retry_job(dependent.id) and status_of(queue, dependent) == "pending"


def test_a_graph_inserted_without_a_transaction_runs_nothing_when_a_job_is_refused(make_queue, monkeypatch) -> None:
    queue = make_queue(**NO_SWEEP)
    ran: list[str] = []
    queue.register_handler("ok", lambda job: ran.append(job.data["n"]))
    queue.store.collection.create_index("organization", unique=True, sparse=True)
    queue.enqueue("ok", {"n": "taken"}, organization="taken", delay_ms=3_600_000)

    def no_sessions(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OperationFailure("Transaction numbers are only allowed on a replica set member or mongos", code=20)

    monkeypatch.setattr(MongoClient, "start_session", no_sessions)
    real = Collection.delete_many

    def delete_many(self: Any, filt: Any, *args: Any, **kwargs: Any) -> Any:
        queue.drain()  # a worker elsewhere claims between the refused insert and its undoing
        return real(self, filt, *args, **kwargs)

    monkeypatch.setattr(Collection, "delete_many", delete_many)
    root, refused = queue.job("ok", {"n": "root"}), queue.job("ok", {"n": "refused"}, organization="taken")
    with pytest.raises(InvalidJobError, match="removed again"):
        queue.enqueue_graph(chain(group(refused, root), queue.job("ok", {"n": "tail"})))
    assert ran == [] and status_of(queue, root) == "missing"
    monkeypatch.undo()
    # Accepted, the roots run and the rest waits for them, as with a transaction.
    monkeypatch.setattr(MongoClient, "start_session", no_sessions)
    first, second = queue.job("ok", {"n": "first"}), queue.job("ok", {"n": "second"})
    queue.enqueue_graph(chain(first, second))
    assert (status_of(queue, first), status_of(queue, second)) == ("pending", "blocked")
    assert "depends_on" not in (queue.store.admin.get(first.id) or {})
    assert queue.drain() == 2 and ran == ["first", "second"]


def test_one_sweep_step_reaches_a_lost_notice_behind_hundreds_of_blocked_jobs(make_queue, monkeypatch) -> None:
    # 250 jobs in one insert_many: on the embedded server, under the parallel suite's load, that outlasted
    # the test lease's 1.5 s bound on every try (CI, 2026-12-04). The sweep, not the bound, is under test.
    queue = make_queue(**NO_SWEEP, lease_ms=30_000, db_timeout_ms=15_000)
    queue.register_handler("ok", lambda job: 1)
    running = queue.enqueue("ok", {}, delay_ms=3_600_000)
    queue.enqueue_many([{"job_type": "ok", "data": {}, "depends_on": [running]} for _ in range(250)])
    upstream = queue.enqueue("ok", {})
    lost = queue.enqueue("ok", {}, depends_on=[upstream])  # last in _id order, behind 250 blocked jobs
    monkeypatch.setattr(queue.store.dependencies, "_release_dependents_of", lambda ended: None)  # notice lost
    assert queue.drain() == 1 and status_of(queue, lost) == "blocked"
    monkeypatch.undo()
    reads = Counter[str]()
    real_find = Collection.find

    def find(self: Any, *args: Any, **kwargs: Any) -> Any:
        reads["find"] += 1
        return real_find(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "find", find)
    decided, finds = queue.store.dependencies.sweep(), reads["find"]
    assert decided == 1 and status_of(queue, lost) == "pending"
    # Three batches, each one read of its jobs and one of their dependencies (none per waiting job), one copy.
    assert finds <= 7, finds
