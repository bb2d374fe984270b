"""A queue created (and even started) before ``fork()`` works in the child."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from helpers import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
]


def _child(queue, job_model, results) -> None:
    # The parent's MongoClient and threads must not be used here.
    try:
        assert not queue.running, "the parent's worker threads do not exist in the child"
        assert queue.worker.owner.pid == os.getpid()
        # A type only the child handles, so the parent's worker cannot take it.
        queue.register_handler("CHILD_ONLY", lambda job: os.getpid())
        job = queue.enqueue("CHILD_ONLY", {"from": "child"})
        queue.start_polling()
        wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=30)
        done = job_model.objects.get(id=job.id)
        assert done.lease_owner.pid == done.result == os.getpid()
        assert queue.stop(timeout=10)
        results.put("ok")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_started_queue_survives_fork(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("CHILD", lambda job: os.getpid())
    parent_job = queue.enqueue("CHILD", {"from": "parent"})
    queue.start_polling()  # as a gunicorn --preload master would (wrongly) do
    wait_until(lambda: job_model.objects.get(id=parent_job.id).status == "completed")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, job_model, results))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert results.get(timeout=5) == "ok"
    # The parent still works after the child used its own connection.
    again = queue.enqueue("CHILD", {"from": "parent again"})
    wait_until(lambda: job_model.objects.get(id=again.id).status == "completed")
    assert job_model.objects.get(id=again.id).result == os.getpid()
