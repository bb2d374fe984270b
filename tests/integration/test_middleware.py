"""The middleware seam: every lifecycle point reaches the hooks, and a failing hook loses nothing."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from helpers import wait_until

from mongo_job_queue import FailJob, InvalidJobError, LeaseOwner, Middleware
from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration


class Recorder(Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def _add(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def before_enqueue(self, queue, doc) -> None:
        doc["headers"] = {"trace": f"trace-{doc['data'].get('n')}"}
        self._add("before_enqueue", doc["type"])

    def after_enqueue(self, queue, doc) -> None:
        self._add("after_enqueue", doc["type"])

    def after_claim(self, queue, doc) -> None:
        self._add("after_claim", doc["type"], doc["attempts"])

    def before_process(self, queue, job) -> None:
        self._add("before_process", job.type, job.headers.get("trace"))

    def after_process(self, queue, job, *, outcome, exc, duration_s) -> None:
        assert duration_s >= 0
        self._add("after_process", job.type, outcome, type(exc).__name__ if exc else None)

    def on_retry_scheduled(self, queue, doc, *, delay_ms, exc) -> None:
        self._add("on_retry_scheduled", doc["type"], type(exc).__name__)

    def on_failed(self, queue, doc, *, exc) -> None:
        self._add("on_failed", doc["type"], type(exc).__name__)

    def on_lease_lost(self, queue, doc) -> None:
        self._add("on_lease_lost", doc["type"])

    def on_orphan_recovered(self, queue, doc, *, failed) -> None:
        self._add("on_orphan_recovered", doc["type"], failed)

    def on_cancelled(self, queue, job_id) -> None:
        self._add("on_cancelled")

    def on_worker_start(self, queue) -> None:
        self._add("on_worker_start")

    def on_worker_stop(self, queue) -> None:
        self._add("on_worker_stop")


class Broken(Middleware):
    def before_enqueue(self, queue, doc) -> None:
        raise RuntimeError("audit service down")

    def after_process(self, queue, job, **kwargs) -> None:
        raise RuntimeError("metrics backend down")


def test_run_once_lifecycle_reaches_every_hook(make_queue, job_model) -> None:
    recorder = Recorder()
    queue = make_queue(retry_delay_ms=0, max_retries=1)
    queue.add_middleware(recorder)
    queue.register_handler("OK", lambda job: job.headers["trace"])

    @queue.handler("FLAKY")
    def flaky(job) -> None:
        raise ConnectionError("down")

    @queue.handler("BAD")
    def bad(job) -> None:
        raise FailJob("no")

    ok = queue.enqueue("OK", {"n": 1})
    queue.enqueue("FLAKY", {"n": 2})
    queue.enqueue("BAD", {"n": 3})
    cancelled = queue.enqueue("OK", {"n": 4}, delay_ms=60_000)
    assert queue.cancel_job(cancelled.id)
    assert queue.drain() == 4
    assert queue.get_job(ok.id).result == "trace-1"  # headers written by middleware were stored
    events = recorder.events
    assert events.count(("before_enqueue", "OK")) == 2
    assert ("before_process", "OK", "trace-1") in events
    assert ("after_process", "OK", "completed", None) in events
    assert ("on_retry_scheduled", "FLAKY", "ConnectionError") in events
    assert ("after_process", "FLAKY", "retry", "ConnectionError") in events
    assert ("after_process", "FLAKY", "failed", "ConnectionError") in events
    assert ("on_failed", "FLAKY", "ConnectionError") in events
    assert ("on_failed", "BAD", "FailJob") in events
    assert ("after_claim", "FLAKY", 2) in events
    assert ("on_cancelled",) in events


def test_pool_hooks_lease_loss_and_orphans(make_queue, job_model) -> None:
    recorder = Recorder()
    queue = make_queue(concurrency=2)
    queue.add_middleware(recorder)
    queue.register_handler("OK", lambda job: None)
    queue.start_polling()
    job = queue.enqueue("OK", {"n": 1})
    wait_until(lambda: ("after_process", "OK", "completed", None) in recorder.events)
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert queue.stop(timeout=10)
    assert ("on_worker_start",) in recorder.events
    assert ("on_worker_stop",) in recorder.events

    # A job whose worker died: recovered by a sweeper whose clock is past the lease.
    orphan = queue.enqueue("OK", {"n": 2})
    claimed = queue.store.jobs.claim(["OK"], ["default"], LeaseOwner.current("dead"))
    assert claimed is not None and claimed.id == orphan.id
    sweeper = make_queue(clock=lambda: utcnow() + timedelta(minutes=5), sync_clock=False)
    sweeper.add_middleware(recorder)
    assert sweeper.recover_orphans() == (1, 0)
    assert ("on_orphan_recovered", "OK", False) in recorder.events
    # The dead worker comes back and reports: its write is fenced, and the hook says so.
    queue.worker.process(claimed)
    assert ("on_lease_lost", "OK") in recorder.events


def test_a_failing_hook_loses_nothing(make_queue, job_model, caplog) -> None:
    queue = make_queue()
    queue.add_middleware(Broken())
    queue.register_handler("OK", lambda job: "done")
    with caplog.at_level("ERROR"):
        job = queue.enqueue("OK", {"n": 1})
        assert queue.run_once().status == "completed"
    assert queue.get_job(job.id).result == "done"
    assert "middleware Broken.before_enqueue failed" in caplog.text
    assert "middleware Broken.after_process failed" in caplog.text


def test_middleware_must_be_a_middleware(make_queue) -> None:
    queue = make_queue()
    with pytest.raises(TypeError, match="Middleware"):
        queue.add_middleware(object())  # type: ignore[arg-type]


class Pairing(Middleware):
    """Checks that every before_* gets its closing hook."""

    def __init__(self) -> None:
        self.open_enqueues = 0
        self.aborted: list[Any] = []
        self.outcomes: list[str] = []

    def before_enqueue(self, queue, doc) -> None:
        self.open_enqueues += 1

    def after_enqueue(self, queue, doc) -> None:
        self.open_enqueues -= 1

    def on_enqueue_aborted(self, queue, doc, *, exc) -> None:
        self.open_enqueues -= 1
        self.aborted.append(type(exc).__name__ if exc else None)

    def after_process(self, queue, job, *, outcome, exc, duration_s) -> None:
        self.outcomes.append(outcome)


class Bloat(Middleware):
    def before_enqueue(self, queue, doc) -> None:
        doc["headers"] = {"blob": "x" * (16 * 1024 * 1024)}


def test_every_announced_enqueue_is_closed(make_queue, job_model) -> None:
    pairing = Pairing()
    queue = make_queue()
    queue.add_middleware(pairing)
    queue.enqueue("T", {}, unique_key="k1")
    queue.enqueue("T", {}, unique_key="k1")  # the existing job is returned: aborted, no error
    queue.add_middleware(Bloat())
    with pytest.raises(InvalidJobError, match=r"the limit is"):
        queue.enqueue_many([{"job_type": "T"}, {"job_type": "T"}])
    assert pairing.open_enqueues == 0
    assert pairing.aborted == [None, "InvalidJobError", "InvalidJobError"]
    assert job_model.objects.count() == 1


def test_after_process_is_emitted_when_the_outcome_cannot_be_written(make_queue, job_model, monkeypatch) -> None:
    pairing = Pairing()
    queue = make_queue()
    queue.add_middleware(pairing)
    queue.register_handler("T", lambda job: "ok")
    queue.enqueue("T", {})

    def down(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(queue.store.jobs, "complete", down)
    with pytest.raises(ConnectionError):
        queue.run_once()
    assert pairing.outcomes == ["error"]


class Exits(Middleware):
    """Raises ``exc`` from every call of one hook."""

    def __init__(self, hook: str, exc: type[BaseException]) -> None:
        self.calls = 0
        self.lock = threading.Lock()

        def raising(*args: Any, **kwargs: Any) -> None:
            with self.lock:
                self.calls += 1
            raise exc(f"{hook} gives up")

        setattr(self, hook, raising)


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("hook", ["after_claim", "before_process", "after_process", "on_retry_scheduled"])
def test_a_hook_raising_a_base_exception_strands_no_job_and_kills_no_thread(
    make_queue, job_model, hook: str, exc: type[BaseException]
) -> None:
    # Worker threads run the hooks: whatever a hook raises is contained, so
    # a whole claimed batch is neither stranded nor left unstarted.
    exits = Exits(hook, exc)
    queue = make_queue(concurrency=4, retry_delay_ms=10)
    queue.add_middleware(exits)
    runs: list[Any] = []
    lock = threading.Lock()

    @queue.handler("FLAKY", max_retries=1)
    def flaky(job: Any) -> None:
        with lock:
            runs.append(job.id)
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")

    jobs = [queue.enqueue("FLAKY", {}) for _ in range(4)]
    queue.start_polling()
    wait_until(
        lambda: all(job_model.objects.get(id=j.id).status == "completed" for j in jobs),
        timeout=20,
        what="every job to complete",
    )
    assert sorted(map(str, runs)) == sorted(str(j.id) for j in jobs for _ in range(2))  # each ran twice, no more
    assert all(job_model.objects.get(id=j.id).attempts == 2 for j in jobs)
    assert exits.calls >= 4
    assert queue.running


@pytest.mark.parametrize("hook", ["after_claim", "before_process"])
def test_ctrl_c_in_a_main_thread_hook_propagates_and_hands_the_claimed_job_back(make_queue, job_model, hook) -> None:
    # In the main thread a KeyboardInterrupt may be the user's Ctrl-C: it is
    # not swallowed, and the job claimed by run_once() goes back unstarted.
    queue = make_queue()
    queue.add_middleware(Exits(hook, KeyboardInterrupt))
    ran: list[Any] = []
    queue.register_handler("X", ran.append)
    job = queue.enqueue("X", {})
    with pytest.raises(KeyboardInterrupt):
        queue.run_once()
    doc = job_model.objects.get(id=job.id)
    assert (doc.status, doc.attempts, ran) == ("pending", 0, [])
