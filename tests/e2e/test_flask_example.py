"""examples/flask_app served for real: werkzeug (plain and with the debug reloader) and gunicorn --preload.

Each test sends real HTTP requests and watches the worker that the app
started itself finish the jobs against the session's wire server.
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta

import pytest
from helpers import wait_until

from .servers import enqueue_examples, gated_uri, serve, stop_gracefully_on_sigterm, wait_finished

__all__ = ["gated_uri", "serve"]

pytestmark = pytest.mark.integration

FLASK = [sys.executable, "-m", "flask", "--app", "examples.flask_app.app:create_app"]


def started_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"job worker started in process (\d+)", log)]


def check_results(jobs: dict) -> None:
    assert jobs["send_welcome_email"]["result"] == {"sent_to": "ada@example.com", "from": "noreply@example.com"}
    assert jobs["resize_image"]["result"] == {"thumbnail": "cat.png.thumb.jpg"}
    report = jobs["generate_report"]
    assert report["attempts"] == 2 and report["last_error"] == "data warehouse busy, try again"
    assert report["result"] == {"organization": "acme", "rows": 42, "attempts": 2}


def test_flask_run_starts_the_worker_at_boot(serve) -> None:
    server = serve([*FLASK, "run", "--host", "127.0.0.1", "--port", "{port}"])
    # At boot, before any job was enqueued (from a background thread: boot does not wait for MongoDB).
    wait_until(lambda: started_pids(server.log()) == [server.pid], timeout=30)
    ids = enqueue_examples(server)
    jobs = wait_finished(server, ids)
    check_results(jobs)
    assert {job["worker_pid"] for job in jobs.values()} == {server.pid}
    status, body = server.request("POST", "/organizations/acme/jobs", {"type": "mine_bitcoin"})
    assert status == 400 and "unknown job type" in body["error"]
    assert server.request("GET", "/jobs/0123456789ab0123456789ab")[0] == 404  # no such job
    assert server.request("GET", "/jobs/not-a-job-id")[0] == 404  # not even an id: a 404, not a 500


def test_sigterm_to_flask_run_stops_the_worker_as_ctrl_c_does(serve, raw_db) -> None:
    server = serve([*FLASK, "run", "--host", "127.0.0.1", "--port", "{port}"])
    wait_until(lambda: started_pids(server.log()) == [server.pid], timeout=30)
    stop_gracefully_on_sigterm(server, raw_db)


def test_debug_reloader_runs_the_worker_in_the_serving_process_only(serve) -> None:
    server = serve([*FLASK, "--debug", "run", "--host", "127.0.0.1", "--port", "{port}"])
    jobs = wait_finished(server, enqueue_examples(server))
    check_results(jobs)
    log = server.log()
    [child] = started_pids(log)  # one worker, in the reloader's child
    assert child != server.pid
    assert {job["worker_pid"] for job in jobs.values()} == {child}
    assert f"not starting the job worker in process {server.pid}: this is the debug reloader's watcher" in log


def test_gunicorn_preload_never_starts_the_worker_in_the_master(serve, raw_db) -> None:
    gunicorn = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-b", "127.0.0.1:{port}"]
    server = serve([*gunicorn, "examples.flask_app.wsgi:app"], env={"EXCHANGE_RATES_EVERY_MS": "300"})
    jobs = wait_finished(server, enqueue_examples(server))
    check_results(jobs)
    log = server.log()
    master = f"not starting the job worker in process {server.pid} at boot (this is gunicorn's master process"
    assert master in log and "--preload) and serves no request); each worker process it forks starts its own" in log
    assert "it starts at this process's first request" not in log  # nothing this master would never do
    workers = started_pids(log)
    assert workers and server.pid not in workers  # started in forked workers, at their first request
    assert set(workers) == {int(pid) for pid in re.findall(r"in process (\d+) \(first request", log)}
    assert {job["worker_pid"] for job in jobs.values()} <= set(workers)
    # The example's schedule fires from the gunicorn workers, one job per fire time.
    wait_until(lambda: raw_db.example_jobs.count_documents({"schedule": {"$exists": True}, "status": "completed"}) >= 3)
    fired = list(raw_db.example_jobs.find({"schedule": "refresh_exchange_rates"}).sort("fire_time", 1))
    times = [doc["fire_time"] for doc in fired]
    assert times == [times[0] + timedelta(milliseconds=300 * i) for i in range(len(times))]
    assert {doc["lease_owner"]["pid"] for doc in fired if doc.get("lease_owner")} <= set(started_pids(server.log()))


def test_gunicorn_workers_without_preload_start_at_boot_and_say_so(serve) -> None:
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}"]
    server = serve([*gunicorn, "examples.flask_app.wsgi:app"])
    # Each worker imports the app after its fork: it starts its job worker at boot, whether it serves or not.
    booted = r"starting the job worker in process (\d+) \(a gunicorn worker process, which imported the app"
    wait_until(lambda: len(set(re.findall(booted, server.log()))) == 2, timeout=30)
    wait_until(lambda: len(set(started_pids(server.log()))) == 2, timeout=30)
    log = server.log()
    assert server.pid not in started_pids(log)
    assert "not starting" not in log and "preload" not in log  # no sentence about a master that does not exist
    check_results(wait_finished(server, enqueue_examples(server)))


def test_gunicorn_serves_while_mongodb_is_unreachable_and_the_workers_start_later(gated_uri, serve) -> None:
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}"]
    server = serve([*gunicorn, "examples.flask_app.wsgi:app"], env={"MONGODB_URI": gated_uri.uri})
    # Each gunicorn worker starts its job worker at boot, in the background: it fails, and the requests do not.
    assert [server.get_within("/health", 5) for _ in range(10)] == [200] * 10
    wait_until(lambda: "could not start in process" in server.log(), timeout=30)
    assert [server.get_within("/health", 5) for _ in range(5)] == [200] * 5
    assert not started_pids(server.log())
    gated_uri.gate.open()
    jobs = wait_finished(server, enqueue_examples(server))
    check_results(jobs)
    assert {job["worker_pid"] for job in jobs.values()} <= set(started_pids(server.log()))
