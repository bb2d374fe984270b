"""examples/django_project served for real: runserver (plain and with its autoreloader) and run_job_worker.

Each test sends real HTTP requests and watches a worker finish the jobs
against the session's wire server: the one the project started at boot, or
a dedicated ``manage.py run_job_worker``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bson import ObjectId
from helpers import wait_until

from .servers import REPO, enqueue_examples, gated_uri, serve, stop_gracefully_on_sigterm, wait_finished
from .test_flask_example import check_results, started_pids

__all__ = ["gated_uri", "serve"]

pytestmark = pytest.mark.integration

PROJECT = REPO / "examples" / "django_project"
RUNSERVER = [sys.executable, "manage.py", "runserver", "127.0.0.1:{port}"]


def manage(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=PROJECT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runserver_starts_the_worker_at_boot(serve) -> None:
    server = serve([*RUNSERVER, "--noreload"], cwd=PROJECT)
    log = server.log()
    assert "starting the job worker in process" in log and "(runserver --noreload)" in log
    jobs = wait_finished(server, enqueue_examples(server))
    check_results(jobs)  # handlers from shop/jobs.py (autodiscovered) and the registry module
    assert {job["worker_pid"] for job in jobs.values()} == {server.pid}
    assert started_pids(server.log()) == [server.pid]
    # shop/jobs.py's cron schedule is fired by the same worker.
    wait_until(lambda: "schedule daily_digest (cron '0 7 * * *' in Europe/Paris) starts" in server.log(), timeout=30)
    status, body = server.request("POST", "/organizations/acme/jobs", {"type": "mine_bitcoin"})
    assert status == 400 and "unknown job type" in body["error"]


def test_sigterm_to_runserver_noreload_stops_the_worker_as_ctrl_c_does(serve, raw_db) -> None:
    server = serve([*RUNSERVER, "--noreload"], cwd=PROJECT)
    wait_until(lambda: started_pids(server.log()) == [server.pid], timeout=30)
    stop_gracefully_on_sigterm(server, raw_db)


def test_autoreloader_runs_the_worker_in_the_serving_process_only(serve) -> None:
    server = serve(RUNSERVER, cwd=PROJECT)
    jobs = wait_finished(server, enqueue_examples(server))
    check_results(jobs)
    log = server.log()
    [child] = started_pids(log)
    assert child != server.pid
    assert {job["worker_pid"] for job in jobs.values()} == {child}
    assert f"not starting the job worker in process {server.pid}: this is runserver's autoreloader watcher" in log


def test_dedicated_run_job_worker_and_no_worker_in_migrate(serve, mongodb_uri, db_name) -> None:
    env = {"MONGODB_URI": mongodb_uri, "MONGODB_DB": db_name}
    server = serve([*RUNSERVER, "--noreload"], cwd=PROJECT, env={"MONGO_JOB_QUEUE_AUTOSTART": "0"})
    ids = enqueue_examples(server)
    assert "MONGO_JOB_QUEUE['AUTOSTART'] is not set" in server.log()
    migrate = manage("migrate", env={**env, "MONGO_JOB_QUEUE_AUTOSTART": "1"})
    assert migrate.returncode == 0, migrate.stderr
    assert "'manage.py migrate' is not a server" in migrate.stderr
    assert "job worker started" not in migrate.stderr
    assert {server.request("GET", f"/jobs/{i}")[1]["status"] for i in ids.values()} == {"pending"}
    worker = manage("run_job_worker", "--burst", "--concurrency", "2", env={**env, "MONGO_JOB_QUEUE_AUTOSTART": "1"})
    assert worker.returncode == 0, worker.stderr
    assert "'manage.py run_job_worker' is not a server" in worker.stderr  # its own worker, not the autostarted one
    report = server.request("GET", f"/jobs/{ids['generate_report']}")[1]
    assert report["status"] == "pending" and report["attempts"] == 1  # burst does not wait for a delayed retry
    worker = manage("run_job_worker", "--max-jobs", "1", "--job-types", "generate_report", env=env)
    assert worker.returncode == 0, worker.stderr
    # settings.LOGGING configures mongo_job_queue: the command adds no root handler, so each line comes once.
    assert worker.stderr.count("the --max-jobs limit; stopping") == 1, worker.stderr
    check_results(wait_finished(server, ids, timeout=10))


def test_gunicorn_serves_while_mongodb_is_unreachable_and_the_worker_starts_later(gated_uri, serve) -> None:
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:{port}", "project.wsgi"]
    server = serve(gunicorn, cwd=PROJECT, env={"MONGODB_URI": gated_uri.uri})
    assert [server.get_within("/health", 5) for _ in range(10)] == [200] * 10
    wait_until(lambda: "could not start in process" in server.log(), timeout=30)
    assert server.get_within("/health", 5) == 200
    assert not started_pids(server.log())
    gated_uri.gate.open()
    jobs = wait_finished(server, enqueue_examples(server))
    check_results(jobs)
    assert {job["worker_pid"] for job in jobs.values()} <= set(started_pids(server.log()))


def test_manage_py_mongo_job_queue_and_the_standalone_cli_on_the_project(mongodb_uri, db_name, raw_db) -> None:
    raw_db.example_jobs.drop()
    env = {"MONGODB_URI": mongodb_uri, "MONGODB_DB": db_name, "MONGO_JOB_QUEUE_AUTOSTART": "0"}
    data = ["--data", '{"image": "cat.png"}', "--fields", '{"organization": "acme"}']
    enqueued = manage("mongo_job_queue", "enqueue", "resize_image", *data, env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = ObjectId(enqueued.stdout.strip())
    stats = manage("mongo_job_queue", "stats", env=env)
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[1].split()[:2] == ["default", "1"]
    refused = manage("mongo_job_queue", "retry", str(job_id), env=env)
    assert refused.returncode == 5 and "it is pending, not failed or cancelled" in refused.stderr
    # The standalone command on the Django integration: --app sets Django up, so the handlers are registered.
    worker = subprocess.run(
        [sys.executable, "-m", "mongo_job_queue", "worker", "--burst", "--app", "mongo_job_queue.contrib.django"],
        cwd=PROJECT,
        env={**os.environ, **env, "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    job = raw_db.example_jobs.find_one({"_id": job_id})
    assert job["status"] == "completed" and job["result"] == {"thumbnail": "cat.png.thumb.jpg"}
