"""The Flask extension in-process, over the wire: init_app, handlers, boot decisions, the flask CLI."""

from __future__ import annotations

import importlib
import logging
import math
import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import click
import mongoengine
import pytest
from flask import Flask, current_app
from flask.cli import FlaskGroup, ScriptInfo, run_command
from helpers import wait_until
from pymongo.uri_parser import parse_uri

from integration.models import IntegrationJob
from integration.tcp_gate import TcpGate
from mongo_job_queue import BaseJob, ConfigError, QueueStateError, ScheduleError
from mongo_job_queue.contrib._boot import Start
from mongo_job_queue.contrib.flask import EXTENSION_KEY, MongoJobQueue, decide_start
from mongo_job_queue.testing import eager

pytestmark = pytest.mark.integration

FAST = {"poll_interval_base_ms": 20, "poll_interval_max_ms": 200, "lease_ms": 3_000, "heartbeat_interval_ms": 500}


@pytest.fixture
def make_app(job_model, monkeypatch):
    """Flask apps on the test model; their workers are stopped at teardown."""
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    apps: list[Flask] = []

    def make(**settings) -> Flask:
        app = Flask(f"app{len(apps)}")
        app.config.update({"MONGO_JOB_QUEUE_MODEL": IntegrationJob, "MONGO_JOB_QUEUE_CONFIG": FAST, **settings})
        apps.append(app)
        return app

    yield make
    for app in apps:
        state = app.extensions.get(EXTENSION_KEY)
        if state is not None:
            state.starter.stop_retrying()
            state.queue.stop(timeout=10)


class GatedJob(BaseJob):
    """Jobs on a connection that goes through a :class:`TcpGate`: the test decides when MongoDB is reachable."""

    meta = {"collection": "gated_jobs", "db_alias": "mjq_gated"}


@pytest.fixture
def gated_uri(mongodb_uri, db_name):
    """A URI to the test database through a gate, closed at first; ``gated_uri.gate.open()`` lets it through.

    Request it before ``make_app``, so the apps' workers stop before the connection goes.
    """
    host, port = parse_uri(mongodb_uri)["nodelist"][0]
    gate = TcpGate((host, port))
    options = "directConnection=true&serverSelectionTimeoutMS=300&connectTimeoutMS=300&heartbeatFrequencyMS=500"
    uri = f"mongodb://127.0.0.1:{gate.port}/{db_name}?{options}"
    yield type("Gated", (), {"uri": uri, "gate": gate})
    gate.stop()
    mongoengine.disconnect(alias="mjq_gated")


class UnreachableJob(BaseJob):
    """Jobs on an alias of their own, which only the settings tests register."""

    meta = {"collection": "unreachable_jobs", "db_alias": "mjq_unreachable"}


def autostart_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mjq-autostart"]


def timed_get(client, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status = client.get(path).status_code
    return status, time.monotonic() - started


def test_extension_pattern_and_handlers_in_app_context(make_app, job_model) -> None:
    jobs = MongoJobQueue()

    @jobs.handler("greet")
    def greet(job) -> str:
        return f"{current_app.config['GREETING']}, {job.data['name']}"

    app = make_app(GREETING="Hello")
    jobs.init_app(app)
    jobs.register_handler("late", lambda job: current_app.name)  # after init_app: reaches the app too
    assert isinstance(app.extensions[EXTENSION_KEY].queue.registry.types(), list)
    with app.app_context():
        job = jobs.enqueue("greet", {"name": "Ada"}, organization="acme")
        jobs.enqueue("late", {})
        assert jobs.queue.drain() == 2
        assert jobs.queue.get_job(job.id).result == "Hello, Ada"
        assert job_model.objects.get(type="late").result == app.name
        with eager(jobs.queue):
            assert jobs.enqueue("greet", {"name": "Bob"}).result == "Hello, Bob"
    with pytest.raises(QueueStateError, match="already initialised"):
        jobs.init_app(app)
    with pytest.raises(QueueStateError, match="no Flask application context"):
        jobs.enqueue("greet", {})


def test_schedules_reach_every_app_and_fire_in_the_app_context(make_app, job_model) -> None:
    jobs = MongoJobQueue()

    @jobs.periodic("hourly-greeting", "0 * * * *", data={"name": "Ada"}, max_retries=1)
    def greet(job) -> str:
        return f"{current_app.config['GREETING']}, {job.data.get('name')}"

    app = make_app(GREETING="Hello")
    jobs.init_app(app)  # the schedule defined before init_app reaches the app's queue
    jobs.schedule("half-hourly", "*/30 * * * *", "hourly-greeting")  # and one defined after
    queue = app.extensions[EXTENSION_KEY].queue
    assert [s.name for s in queue.scheduler.all()] == ["half-hourly", "hourly-greeting"]
    queue.fire_schedules(datetime(2026, 1, 1, 9, 45))
    fires = queue.fire_schedules(datetime(2026, 1, 1, 10, 0, 1))
    assert sorted(f.schedule for f in fires if f.enqueued) == ["half-hourly", "hourly-greeting"]
    assert queue.drain() == 2
    assert {j.result for j in job_model.objects(schedule__exists=True)} == {"Hello, Ada", "Hello, None"}
    assert job_model.objects.get(schedule="hourly-greeting").max_retries == 1  # the job's and the handler's
    assert queue.registry.get("hourly-greeting").max_retries == 1
    assert jobs.unschedule("half-hourly") is True and [s.name for s in queue.scheduler.all()] == ["hourly-greeting"]
    with pytest.raises(ScheduleError, match="already registered"):
        jobs.periodic("hourly-greeting", "0 * * * *", job_type="other")(lambda job: None)
    assert "other" not in queue.registry  # all or nothing


def test_settings_are_checked(make_app) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*MONGO_JOB_QUEUE_CONCURENCY"):
        MongoJobQueue(make_app(MONGO_JOB_QUEUE_CONCURENCY=3))
    with pytest.raises(ConfigError, match="must be True or False"):
        MongoJobQueue(make_app(MONGO_JOB_QUEUE_START_WORKER="yes"))
    with pytest.raises(ConfigError, match="concurrency"):
        MongoJobQueue(make_app(MONGO_JOB_QUEUE_CONFIG={"concurrency": 0}))
    with pytest.raises(ConfigError, match="cannot be imported"):
        MongoJobQueue(make_app(MONGO_JOB_QUEUE_MODEL="integration.models:Nope"))
    app = Flask("bare")
    with pytest.raises(ConfigError, match="MONGO_JOB_QUEUE_MODEL"):
        MongoJobQueue(app)
    ext = MongoJobQueue(make_app(MONGO_JOB_QUEUE_MODEL="integration.models:IntegrationJob"))
    assert ext.job_model is None


@pytest.mark.parametrize(
    ("setting", "value"),
    [("MONGODB_URI", 5), ("MONGODB_URI", ["mongodb://localhost"]), ("MONGODB_DB", 5)],
)
def test_the_connection_settings_must_be_strings(make_app, setting, value) -> None:
    """The promise of init_app's docstring: a ConfigError naming the setting, not MongoEngine's TypeError."""
    settings = {
        "MONGO_JOB_QUEUE_MODEL": UnreachableJob,  # its own alias: a setting let through must not re-point another's
        "MONGO_JOB_QUEUE_MONGODB_URI": "mongodb://127.0.0.1:1/unreachable",
        f"MONGO_JOB_QUEUE_{setting}": value,
    }
    with pytest.raises(ConfigError, match=rf"MONGO_JOB_QUEUE_{setting} must be a string or None, got "):
        MongoJobQueue(make_app(**settings))


@pytest.mark.parametrize("value", [float("nan"), -1, "30", True])
def test_stop_timeout_must_be_a_number_of_seconds(make_app, value) -> None:
    with pytest.raises(ConfigError, match="MONGO_JOB_QUEUE_STOP_TIMEOUT must be a number >= 0"):
        MongoJobQueue(make_app(MONGO_JOB_QUEUE_STOP_TIMEOUT=value))


@pytest.mark.parametrize(("value", "expected"), [(math.inf, math.inf), (None, math.inf), (0, 0.0), (1e10, 1e10)])
def test_stop_timeout_inf_or_none_waits_as_long_as_jobs_take(make_app, value, expected) -> None:
    app = make_app(MONGO_JOB_QUEUE_STOP_TIMEOUT=value)
    MongoJobQueue(app)
    assert app.extensions[EXTENSION_KEY].starter.stop_timeout == expected  # passed on to Worker.stop at exit


def test_boot_decisions(make_app, monkeypatch) -> None:
    app = make_app()
    assert decide_start(app, False).when is Start.NEVER
    app.testing = True
    assert "TESTING" in decide_start(app, True).reason
    app.testing = False
    assert decide_start(app, True).when is Start.LAZY  # no 'flask run': may still fork
    app.debug = True
    assert "reloader" in decide_start(app, True).reason
    app.debug = False
    flask_cli = click.Context(FlaskGroup(name="flask"), obj=ScriptInfo())
    with click.Context(run_command, parent=flask_cli) as ctx:
        ctx.params["reload"] = None
        assert decide_start(app, True).when is Start.NOW  # flask run, no debug: no reloader
        ctx.params["reload"] = True
        assert "watcher" in decide_start(app, True).reason and decide_start(app, True).when is Start.NEVER
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
        assert decide_start(app, True).when is Start.NOW  # the reloader's serving child
        monkeypatch.delenv("WERKZEUG_RUN_MAIN")
    with click.Context(FlaskGroup(name="flask"), obj=ScriptInfo()):
        assert decide_start(app, True).when is Start.NEVER  # flask shell, flask mongo-job-queue, ...
    with click.Context(click.Command("main")):  # another click program: uvicorn, a launcher
        decision = decide_start(app, True)
        assert decision.when is Start.LAZY and "flask CLI" not in decision.reason
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")
    decision = decide_start(app, True)
    assert decision.when is Start.LAZY and "gunicorn" in decision.reason


def test_lazy_start_at_the_first_request_and_a_log_line(make_app, job_model, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mongo_job_queue.contrib")
    jobs = MongoJobQueue()
    jobs.register_handler("t", lambda job: "done")
    app = make_app(MONGO_JOB_QUEUE_START_WORKER=True)

    @app.post("/enqueue")
    def enqueue_view() -> dict:
        return {"id": str(jobs.enqueue("t", {}).id)}

    jobs.init_app(app)
    queue = jobs.get_queue(app)
    assert not queue.running
    assert "not starting the job worker in process" in caplog.text and "first request" in caplog.text
    job_id = app.test_client().post("/enqueue").get_json()["id"]
    wait_until(lambda: queue.running, timeout=30, what="the worker started in the background")
    wait_until(lambda: job_model.objects.get(id=job_id).status == "completed", timeout=30)
    assert "job worker started in process" in caplog.text
    assert jobs.start_worker(app) is False  # already running here


def test_flask_cli_group_mirrors_the_standalone_cli(make_app, job_model) -> None:
    jobs = MongoJobQueue()
    jobs.register_handler("t", lambda job: current_app.name)
    app = make_app(MONGO_JOB_QUEUE_START_WORKER=True)
    jobs.init_app(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["mongo-job-queue", "enqueue", "t", "--fields", '{"organization": "acme"}'])
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    result = runner.invoke(args=["mongo-job-queue", "worker", "--burst", "--log-level", "WARNING"])
    assert result.exit_code == 0, result.output
    assert job_model.objects.get(id=job_id).result == app.name  # ran in the app's context
    result = runner.invoke(args=["mongo-job-queue", "stats"])
    assert result.exit_code == 0 and "default" in result.output
    result = runner.invoke(args=["mongo-job-queue", "retry", "nonsense"])
    assert result.exit_code == 2 and "not a job id" in result.output
    result = runner.invoke(args=["mongo-job-queue", "--help"])
    assert result.exit_code == 0 and "worker" in result.output and "exit codes" in result.output
    assert "MODULE:QUEUE" not in result.output  # the app already knows its queue


def test_requests_are_served_while_the_database_is_unreachable_and_the_worker_starts_later(
    gated_uri, make_app, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mongo_job_queue.contrib")
    # Starter threads of earlier tests may still be finishing their last attempt: count this app's only.
    earlier = set(autostart_threads())
    jobs = MongoJobQueue(job_model=GatedJob)
    jobs.register_handler("t", lambda job: "done")
    app = make_app(MONGO_JOB_QUEUE_MONGODB_URI=gated_uri.uri, MONGO_JOB_QUEUE_START_WORKER=True)

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}  # touches no database

    @app.post("/enqueue")
    def enqueue_view() -> dict:
        return {"id": str(jobs.enqueue("t", {}).id)}

    jobs.init_app(app)
    starter = app.extensions[EXTENSION_KEY].starter
    starter.retry_min_s, starter.retry_max_s = 0.05, 0.3
    queue = jobs.get_queue(app)
    client = app.test_client()
    for _ in range(5):  # each request would have retried the start and waited out server selection
        status, took = timed_get(client, "/health")
        assert status == 200 and took < 1.0
    # The starter sets last_error, then logs it: wait for both (a loaded machine ran the check between).
    wait_until(lambda: starter.last_error is not None, timeout=30, what="a failed background start")
    wait_until(lambda: "could not start in process" in caplog.text, timeout=30, what="the failed start logged")
    status, took = timed_get(client, "/health")  # while the starter thread waits on the server
    assert status == 200 and took < 1.0
    assert not queue.running
    assert len(set(autostart_threads()) - earlier) == 1  # one retrying thread, not one per request

    gated_uri.gate.open()
    wait_until(lambda: queue.running, timeout=60, what="the worker started once MongoDB was reachable")
    wait_until(lambda: not set(autostart_threads()) - earlier, timeout=10, what="the starter thread to end")
    assert starter.last_error is None
    job_id = client.post("/enqueue").get_json()["id"]
    wait_until(lambda: GatedJob.objects.get(id=job_id).status == "completed", timeout=30)


def test_a_web_process_without_handlers_serves_and_starts_once_one_is_registered(make_app, job_model) -> None:
    jobs = MongoJobQueue()
    app = make_app(MONGO_JOB_QUEUE_START_WORKER=True)

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    jobs.init_app(app)
    starter = app.extensions[EXTENSION_KEY].starter
    starter.retry_min_s, starter.retry_max_s = 0.05, 0.2
    client = app.test_client()
    assert [client.get("/health").status_code for _ in range(3)] == [200, 200, 200]
    wait_until(lambda: isinstance(starter.last_error, QueueStateError), timeout=30, what="the refused start")
    assert not jobs.get_queue(app).running
    jobs.register_handler("t", lambda job: "done")
    wait_until(lambda: jobs.get_queue(app).running, timeout=30, what="the worker started by the retry")


def test_start_worker_without_waiting_returns_at_once_and_retries(gated_uri, make_app) -> None:
    jobs = MongoJobQueue(job_model=GatedJob)
    jobs.register_handler("t", lambda job: "done")
    app = make_app(MONGO_JOB_QUEUE_MONGODB_URI=gated_uri.uri)
    jobs.init_app(app)
    starter = app.extensions[EXTENSION_KEY].starter
    starter.retry_min_s, starter.retry_max_s = 0.05, 0.3
    started = time.monotonic()
    assert jobs.start_worker(app, wait=False) is False
    assert time.monotonic() - started < 1.0
    wait_until(lambda: starter.last_error is not None, timeout=30, what="a failed background start")
    gated_uri.gate.open()
    wait_until(lambda: jobs.get_queue(app).running, timeout=60, what="the worker started in the background")


def test_an_app_loaded_by_another_click_program_starts_its_worker(make_app, job_model) -> None:
    """uvicorn (one process) or a custom launcher is click-based too: it is no flask CLI command."""
    from click.testing import CliRunner

    jobs = MongoJobQueue()
    jobs.register_handler("t", lambda job: "done")
    apps = []

    @click.command("main")
    def launcher() -> None:
        app = make_app(MONGO_JOB_QUEUE_START_WORKER=True)
        jobs.init_app(app)  # inside the launcher's click context, as uvicorn imports the app
        apps.append(app)

    result = CliRunner().invoke(launcher, [])
    assert result.exit_code == 0, result.output
    [app] = apps

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    assert app.test_client().get("/health").status_code == 200
    wait_until(lambda: jobs.get_queue(app).running, timeout=30, what="the worker started at the first request")


def test_a_shutdown_during_a_background_start_stops_the_worker_it_started(make_app, job_model) -> None:
    # The exit handler ran while start_polling was under way: it saw no worker to stop, and the worker
    # then ran on after shutdown, with no stop of its own.
    jobs = MongoJobQueue()
    jobs.register_handler("t", lambda job: None)
    app = make_app(MONGO_JOB_QUEUE_START_WORKER=True)
    jobs.init_app(app)
    state = app.extensions[EXTENSION_KEY]
    queue, starter = state.queue, state.starter
    entered, release = threading.Event(), threading.Event()
    start_polling = queue.start_polling

    def gated_start(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return start_polling(*args, **kwargs)

    queue.start_polling = gated_start
    app.test_client().get("/")  # the lazy start, in the background
    assert entered.wait(30)
    starter._stop_at_exit()  # the process exits meanwhile
    release.set()
    wait_until(lambda: not starter.retrying, timeout=30, what="the background start finished")
    assert not queue.running


DOCS = Path(__file__).resolve().parents[2] / "docs"
_GUIDE_FILE = re.compile(r"^    # myapp/(\w+)\.py$")


def guide_files(section: str) -> dict[str, str]:
    """The ``# myapp/<name>.py`` parts of a page's literal blocks, dedented, by module name."""
    files: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    for line in section.splitlines():
        header = _GUIDE_FILE.match(line)
        if header:
            current = files.setdefault(header.group(1), [])
        elif current is not None and (line.startswith("    ") or not line.strip()):
            current.append(line[4:])
        else:
            current = None  # the literal block ended
    return {name: "\n".join(lines).strip() + "\n" for name, lines in files.items()}


def test_the_guide_s_app_factory_runs_as_written(job_model, tmp_path, monkeypatch) -> None:
    """docs/flask.rst's Set up: the factory, the views (a 404 for unknown and malformed ids) and wsgi.py."""
    text = (DOCS / "flask.rst").read_text()
    files = guide_files(text[text.index("Set up\n------\n") : text.index("\nTracing and metrics\n")])
    assert set(files) == {"tasks", "views", "__init__", "wsgi"}
    package = tmp_path / "myapp"
    package.mkdir()
    for name, code in files.items():
        (package / f"{name}.py").write_text(code)
    (package / "models.py").write_text("from integration.models import IntegrationJob as Job\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FLASK_MAIL_SENDER", "noreply@example.com")  # read by the guide's from_prefixed_env()
    try:
        myapp = importlib.import_module("myapp")
        sent: list[tuple[str, str]] = []
        monkeypatch.setattr("myapp.tasks.send_mail", lambda sender, to: sent.append((sender, to)), raising=False)
        app = myapp.create_app({"TESTING": True})
        client = app.test_client()
        assert client.get("/jobs/not-a-job-id").status_code == 404
        assert client.get("/jobs/0123456789ab0123456789ab").status_code == 404
        response = client.post("/organizations/acme/welcome", json={"email": "ada@example.com"})
        assert response.status_code == 202
        status_url = f"/jobs/{response.get_json()['id']}"
        assert client.get(status_url).get_json() == {"status": "pending", "result": None}
        queue = myapp.jobs.get_queue(app)
        assert queue.drain() == 1
        assert sent == [("noreply@example.com", "ada@example.com")]
        assert client.get(status_url).get_json()["status"] == "completed"
        wsgi = importlib.import_module("myapp.wsgi")  # what gunicorn imports
        assert wsgi.app.extensions[EXTENSION_KEY].queue is not queue  # its own app, its own queue
    finally:
        for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
            del sys.modules[name]
