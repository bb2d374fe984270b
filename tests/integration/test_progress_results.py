"""Progress, results and waiting, over the wire."""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until

from mongo_job_queue import InvalidJobError, JobTimeout, QueueStateError

pytestmark = pytest.mark.integration


def test_progress_is_visible_to_other_processes_while_the_job_runs(make_queue, job_model, raw_db) -> None:
    worker = make_queue(progress_min_interval_ms=0)
    step = threading.Event()

    @worker.handler("import")
    def run(job) -> dict:
        job.report_progress(10, "reading")
        assert step.wait(30)
        job.report_progress(90.5, "writing")
        return {"rows": 3}

    worker.start_polling()
    job = worker.enqueue("import", {})
    # raw_db is a separate client, as another process would use.
    doc = wait_until(lambda: raw_db["jobs"].find_one({"_id": job.id, "progress.percent": 10}), timeout=30)
    assert doc["progress"]["message"] == "reading" and doc["status"] == "processing"
    step.set()
    done = make_queue().wait(job.id, timeout=30)
    assert done.status == "completed" and done.result == {"rows": 3}
    assert done.progress["percent"] == 90.5 and done.progress["message"] == "writing"


def test_throttled_progress_is_carried_by_the_heartbeat(make_queue, raw_db) -> None:
    worker = make_queue(progress_min_interval_ms=600_000)  # only the first report is written at once
    release = threading.Event()

    @worker.handler("T")
    def run(job) -> None:
        for percent in (1, 2, 3):
            job.report_progress(percent)
        assert release.wait(30)

    worker.start_polling()
    job = worker.enqueue("T", {})
    wait_until(lambda: raw_db["jobs"].find_one({"_id": job.id, "progress.percent": 3}), timeout=30)
    release.set()
    assert worker.wait(job.id, timeout=30).status == "completed"


@pytest.mark.parametrize("batch_acks", [False, True])
def test_a_completed_job_keeps_the_last_progress_its_handler_reported(make_queue, batch_acks) -> None:
    # Only the first report is written at once; the last one is still buffered when the handler returns.
    worker = make_queue(progress_min_interval_ms=600_000, batch_acks=batch_acks)

    @worker.handler("steps")
    def run(job) -> str:
        job.report_progress(25, "step 1/4")
        job.report_progress(75, "step 3/4")
        return "done"

    worker.start_polling()
    job = worker.enqueue("steps", {})
    done = make_queue().wait(job.id, timeout=30)
    assert done.status == "completed" and done.result == "done"
    assert (done.progress["percent"], done.progress["message"]) == (75, "step 3/4")
    assert done.progress["at"] <= done.finished_at


def test_bad_progress_is_refused_and_outside_a_handler_too(make_queue) -> None:
    queue = make_queue()
    errors = []

    @queue.handler("T")
    def run(job) -> None:
        for args in ((101,), (-1,), ("50",), (50, 7)):
            try:
                job.report_progress(*args)
            except InvalidJobError as exc:
                errors.append(str(exc))

    job = queue.enqueue("T", {})
    assert queue.run_once().status == "completed"
    assert len(errors) == 4
    with pytest.raises(QueueStateError):
        queue.get_job(job.id).report_progress(50)


def test_results_over_the_bound_or_unencodable_are_recorded_as_errors(make_queue) -> None:
    queue = make_queue(max_result_bytes=1_000)
    queue.register_handler("big", lambda job: {"blob": "x" * 2_000})
    queue.register_handler("odd", lambda job: {"when": object()})
    queue.register_handler("fine", lambda job: ["ok", 1])
    big, odd, fine = queue.enqueue("big", {}), queue.enqueue("odd", {}), queue.enqueue("fine", {})
    queue.drain()
    big, odd, fine = (queue.get_job(j.id) for j in (big, odd, fine))
    assert big.status == "completed" and big.result is None
    assert "over max_result_bytes=1000" in big.result_error
    assert odd.status == "completed" and odd.result is None and "not stored" in odd.result_error
    assert fine.result == ["ok", 1] and fine.result_error is None


def test_batched_acks_store_the_result_error_too(make_queue) -> None:
    queue = make_queue(max_result_bytes=100, concurrency=2)
    queue.register_handler("big", lambda job: "y" * 500)
    queue.start_polling()
    job = queue.enqueue("big", {})
    done = queue.wait(job.id, timeout=30)
    assert done.status == "completed" and "over max_result_bytes=100" in done.result_error


def test_wait_times_out_and_returns_none_for_unknown_jobs(make_queue) -> None:
    queue = make_queue()
    job = queue.enqueue("nobody_runs_this", {})
    with pytest.raises(JobTimeout, match="still pending"):
        queue.wait(job.id, timeout=0.3)
    assert queue.wait("0123456789ab0123456789ab", timeout=1) is None
