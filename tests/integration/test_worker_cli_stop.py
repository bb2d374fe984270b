"""``worker --stop-timeout inf``: the first signal waits for running jobs without a limit."""

from __future__ import annotations

import signal

import pytest
from helpers import wait_until

from mongo_job_queue import cli

APP = "integration.cli_app:make_queue"


@pytest.mark.parametrize("stop_timeout", ["inf", "1e10"])
def test_sigterm_with_an_unbounded_stop_timeout_waits_for_the_running_job(job_model, spawn, stop_timeout) -> None:
    queue = cli.load_queue(APP)
    job = queue.enqueue("sleep", {"ms": 1_500})
    proc = spawn("worker", "--app", APP, "--stop-timeout", stop_timeout)
    # Its handler runs: a job merely claimed when the signal comes is handed back, not waited for.
    wait_until(lambda: job_model._get_db()["handlers_started"].find_one({"job": job.id}), timeout=30)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_OK, out
    assert job_model.objects.get(id=job.id).status == "completed", out
