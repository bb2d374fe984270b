"""``worker --burst`` drains what it may claim and exits, even while a queue or a job type is paused."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.integration

APP = "integration.cli_app:make_queue"


@pytest.mark.parametrize("pause", [{"queues": ["mail"]}, {"job_types": ["sleep"]}])
def test_burst_worker_exits_while_a_paused_job_waits(make_queue, job_model, spawn, pause) -> None:
    queue = make_queue()
    runnable = queue.enqueue("ok", {"n": 1})
    waiting = queue.enqueue("sleep", {"ms": 1}, queue="mail")
    queue.pause(**pause)
    proc = spawn("worker", "--app", APP, "--burst", "--queues", "default,mail", "--log-level", "INFO")
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the burst worker did not exit while a paused job waited")
    assert proc.returncode == 0, out
    assert job_model.objects.get(id=runnable.id).status == "completed"
    assert job_model.objects.get(id=waiting.id).status == "pending"


def test_has_due_leaves_paused_queues_and_types_out(make_queue) -> None:
    queue = make_queue()
    queue.enqueue("sleep", {"ms": 1}, queue="mail")
    assert queue.store.admin.has_due(["sleep"], ["mail"])
    queue.pause(queues=["mail"])
    assert not queue.store.admin.has_due(["sleep"], ["mail", "default"])
    queue.resume(queues=["mail"])
    queue.pause(job_types=["sleep"])
    assert not queue.store.admin.has_due(["sleep", "ok"], ["mail"])
    queue.resume(job_types=["sleep"])
    assert queue.store.admin.has_due(["sleep"], ["mail"])
