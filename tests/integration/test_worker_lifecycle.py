"""Start and stop: every thread ends, and the corners after a timed-out stop keep their leases."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue.errors import QueueStateError
from mongo_job_queue.worker.runner import EXIT_OK, run_worker


def _threads(queue: Any, suffix: str = "") -> list[threading.Thread]:
    prefix = f"mjq-{queue.worker.owner.worker_id}-"
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.name.endswith(suffix)]


def _blocked_handler(queue: Any) -> tuple[threading.Event, threading.Event]:
    started, release = threading.Event(), threading.Event()

    @queue.handler("HELD")
    def held(job: Any) -> str:
        started.set()
        assert release.wait(30)
        return "late"

    return started, release


def test_stop_ends_every_thread_it_started_even_a_waiting_change_stream_read(make_queue) -> None:
    # Default change_stream_max_await_ms: an idle worker's read waits 20 s on the server.
    queue = make_queue(concurrency=2, change_stream_max_await_ms=20_000)
    queue.register_handler("X", lambda job: None)
    before = threading.active_count()
    queue.start_polling()
    wait_until(lambda: queue.worker.listening_for_jobs, timeout=10)
    time.sleep(0.5)  # the poller found nothing: the stream's read is now waiting on the server
    began = time.monotonic()
    assert queue.stop(timeout=10)
    assert time.monotonic() - began < 5
    assert _threads(queue) == []
    assert threading.active_count() <= before


def test_a_restart_after_a_timed_out_stop_keeps_one_heartbeat_thread(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.stop(timeout=0.2) is False
    queue.start_polling()
    try:
        assert len(_threads(queue, "-leases")) == 1
    finally:
        release.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")


def test_configure_worker_after_a_timed_out_stop_keeps_renewing_running_jobs(make_queue, job_model) -> None:
    lease = {"lease_ms": 1_000, "heartbeat_interval_ms": 200}
    queue = make_queue(concurrency=1, **lease)
    sweeper = make_queue(**lease)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.stop(timeout=0.2) is False
    queue.configure_worker(concurrency=2)
    try:
        holds_for(
            lambda: sweeper.recover_orphans() == (0, 0) and job_model.objects.get(id=job.id).status == "processing",
            duration=2.5,
            what="the running job keeps its heartbeat after configure_worker",
        )
    finally:
        release.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert job_model.objects.get(id=job.id).result == "late"


def test_force_cuts_short_the_wait_for_a_poller_inside_a_claim(make_queue) -> None:
    queue = make_queue(concurrency=2)
    queue.register_handler("X", lambda job: None)
    in_claim, release = threading.Event(), threading.Event()
    real = queue.store.jobs.claim_batch

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        in_claim.set()
        release.wait(30)
        return real(*args, **kwargs)

    queue.store.jobs.claim_batch = slow_claim  # type: ignore[method-assign]
    queue.start_polling()
    assert in_claim.wait(10)
    force = threading.Event()
    result: dict[str, Any] = {}

    def stop() -> None:
        began = time.monotonic()
        result["finished"] = queue.stop(30, force=force)
        result["took"] = time.monotonic() - began

    stopper = threading.Thread(target=stop)
    stopper.start()
    wait_until(lambda: queue.worker._stopping.is_set(), timeout=10, what="stop() to begin")
    force.set()  # the second signal
    stopper.join(10)
    release.set()
    assert result["took"] < 5, result
    assert result["finished"] is False  # the poller was still inside its claim: said so


def test_shrinking_the_lease_after_a_timed_out_stop_keeps_every_lease_alive(make_queue, job_model) -> None:
    # The heartbeat thread outlives the stop (a run is still going) and the
    # restart; after configure_worker() every renewal grants the new, short
    # lease, so the thread must beat at the new interval, for the old run and
    # for a run claimed after the restart alike.
    queue = make_queue(concurrency=2, lease_ms=4_000, heartbeat_interval_ms=2_000)
    entered: list[Any] = []
    release = threading.Event()

    @queue.handler("HELD")
    def held(job: Any) -> None:
        entered.append(job.id)
        assert release.wait(30)

    first = queue.enqueue("HELD", {})
    queue.start_polling()
    wait_until(lambda: entered == [first.id])
    try:
        assert queue.stop(timeout=0.2) is False
        queue.configure_worker(lease_ms=1_000, heartbeat_interval_ms=200)
        second = queue.enqueue("HELD", {})
        queue.start_polling()
        wait_until(lambda: len(entered) == 2)

        def leased() -> bool:
            now = queue.store.now()
            docs = [queue.get_job(j.id) for j in (first, second)]  # naive UTC, on a tz_aware connection too
            return all(d.status == "processing" and d.lease_expires_at > now for d in docs)

        holds_for(leased, duration=4.5, what="both leases renewed before they lapse")
        assert entered == [first.id, second.id]  # neither ran twice
    finally:
        release.set()
    wait_until(lambda: {job_model.objects.get(id=j.id).status for j in (first, second)} == {"completed"})
    assert queue.stop(10)


def test_a_stop_after_a_restart_still_waits_for_and_reports_the_earlier_start_s_poller(make_queue) -> None:
    # The first stop times out while the poller is inside a claim; the
    # restart's stop must not forget that poller and claim all is done.
    queue = make_queue(concurrency=2, change_stream_wakeups=False)
    queue.register_handler("X", lambda job: None)
    entered, release = threading.Event(), threading.Event()
    real_claim = queue.store.jobs.claim_batch

    def slow_first_claim(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)  # a claim held up on the server, deaf to the stop
        return real_claim(*args, **kwargs)

    queue.store.jobs.claim_batch = slow_first_claim  # type: ignore[method-assign]
    queue.start_polling()
    assert entered.wait(10)
    try:
        assert queue.stop(timeout=0.3) is False
        queue.start_polling()
        wait_until(lambda: queue.running)
        assert queue.stop(timeout=1.0) is False  # the first start's poller is still inside its claim
    finally:
        release.set()
    wait_until(lambda: _threads(queue, "-poller") == [], timeout=10, what="the earlier poller to end")


def test_start_polling_during_another_thread_s_stop_starts_once_that_stop_ends(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    started, release = _blocked_handler(queue)
    queue.register_handler("QUICK", lambda job: "done")
    queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    stopper = threading.Thread(target=queue.stop, args=(30,))
    stopper.start()
    wait_until(lambda: not queue.running)  # the stop has begun and waits for the held job
    starter = threading.Thread(target=queue.start_polling)
    starter.start()
    holds_for(starter.is_alive, duration=0.3, what="start_polling() waits for the stop")
    release.set()
    stopper.join(20)
    starter.join(20)
    assert not stopper.is_alive() and not starter.is_alive()
    assert queue.running  # started after the stop, not silently dropped
    job = queue.enqueue("QUICK", {})
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=10)


def test_start_polling_from_a_thread_the_stop_waits_for_raises(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    entered, stopping, errors = threading.Event(), threading.Event(), []

    @queue.handler("RESTART")
    def restart(job: Any) -> None:
        entered.set()
        assert stopping.wait(10)
        wait_until(lambda: not queue.running)
        try:
            queue.start_polling()  # the stop waits for this very handler: waiting would deadlock
        except QueueStateError as exc:
            errors.append(exc)

    job = queue.enqueue("RESTART", {})
    queue.start_polling()
    assert entered.wait(10)
    stopping.set()
    assert queue.stop(20) is True
    assert len(errors) == 1 and "during stop()" in str(errors[0])
    assert job_model.objects.get(id=job.id).status == "completed"


def test_requeue_running_does_not_make_a_job_due_while_its_handler_still_runs(make_queue, job_model) -> None:
    lease = {"lease_ms": 1_000, "heartbeat_interval_ms": 200}
    queue = make_queue(concurrency=1, **lease)
    sweeper = make_queue(**lease)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.stop(timeout=0.2, requeue_running=True) is False
    try:
        holds_for(
            lambda: sweeper.recover_orphans() == (0, 0) and job_model.objects.get(id=job.id).status == "processing",
            duration=2.0,
            what="not due while its handler runs in this process",
        )
        # At process exit it goes back to the queue, the attempt counted.
        queue.worker.requeue_abandoned()
        doc = job_model.objects.get(id=job.id)
        assert doc.status == "pending"
        assert doc.last_error.type.endswith("WorkerShutdown")
    finally:
        release.set()


def test_a_shutdown_requeue_is_not_due_until_the_exiting_process_can_no_longer_run_it(make_queue, job_model) -> None:
    # The requeue is written by an exit hook, and the handler thread keeps
    # running until the interpreter is gone: another worker must not be able
    # to claim the job at once, only after a grace (here 2 s, the minimum).
    queue = make_queue(concurrency=1, lease_ms=30_000, heartbeat_interval_ms=1_000)
    other = make_queue()
    other.register_handler("HELD", lambda job: None)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    try:
        assert queue.stop(timeout=0.2, requeue_running=True) is False
        queue.worker.requeue_abandoned()  # what the exit hook does
        requeued_at = queue.store.now()
        doc = queue.get_job(job.id)  # naive UTC, on a tz_aware connection too
        assert doc.status == "pending" and doc.attempts == 1
        assert doc.last_error.type.endswith("WorkerShutdown")
        assert (doc.run_at - requeued_at).total_seconds() > 1.5, doc.run_at
        assert other.worker.claim_one() is None  # not due while the exiting process may still run it
    finally:
        release.set()
    # After the grace it is an ordinary due job.
    claimed = wait_until(other.worker.claim_one, timeout=10)
    assert claimed.id == job.id and claimed.doc["attempts"] == 2


def test_a_handler_finishing_after_a_requeue_running_stop_records_its_outcome(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.stop(timeout=0.2, requeue_running=True) is False
    release.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    queue.worker.requeue_abandoned()  # what the exit hook does: nothing left to requeue
    assert job_model.objects.get(id=job.id).status == "completed"


@pytest.mark.parametrize("timeout", [math.inf, None, 1e10])
def test_stop_can_wait_forever(make_queue, job_model, timeout: Any) -> None:
    queue = make_queue(concurrency=1)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    queue.start_polling()
    assert started.wait(10)
    threading.Timer(0.5, release.set).start()
    assert queue.stop(timeout, requeue_running=True) is True
    assert job_model.objects.get(id=job.id).status == "completed"


def test_run_worker_with_an_infinite_stop_timeout(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    started, release = _blocked_handler(queue)
    job = queue.enqueue("HELD", {})
    threading.Timer(0.5, release.set).start()
    code = run_worker(
        queue, stop_timeout=math.inf, install_signal_handlers=False, until=started.is_set, check_interval=0.05
    )
    assert code == EXIT_OK
    assert job_model.objects.get(id=job.id).status == "completed"


def test_running_tells_the_truth_when_the_poller_thread_is_gone(make_queue) -> None:
    queue = make_queue(concurrency=1)
    queue.register_handler("X", lambda job: None)
    # A poller that ends at once, as one killed by an error would.
    queue.worker.poller.run = lambda *args: None  # type: ignore[method-assign]
    queue.start_polling()
    wait_until(lambda: not queue.running, timeout=5, what="running turns False")
    # start_polling() then restarts it, instead of believing it runs.
    del queue.worker.poller.run
    queue.start_polling()
    assert queue.running
    job = queue.enqueue("X", {})
    wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=10)
