"""The ``mongo-job-queue`` command line over the wire: admin commands, the worker, exit codes."""

from __future__ import annotations

import io
import json
import math
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import wait_until
from mongoengine import StringField
from pymongo import MongoClient

from mongo_job_queue import BaseJob, cli, create_job_queue

from .models import ALIAS

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]
APP = "integration.cli_app:make_queue"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_enqueue_stats_cancel_retry_purge(job_model) -> None:
    code, out, err = run("enqueue", "ok", "--app", APP, "--data", '{"n": 7}', "--fields", '{"organization": "acme"}')
    assert code == 0, err
    job = job_model.objects.get(id=out.strip())
    assert job.type == "ok" and job.data == {"n": 7} and job.organization == "acme" and job.status == "pending"
    code, out, _ = run("enqueue", "ok", "--app", APP, "--queue", "mail", "--delay", "1h", "--priority", "3")
    delayed = out.strip()
    assert code == 0 and job_model.objects.get(id=delayed).run_at > job.run_at + timedelta(minutes=59)

    code, out, _ = run("stats", "--app", APP)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "queue",
        *("pending", "processing", "completed", "failed", "cancelled", "blocked"),
        *("oldest", "due", "paused"),
    ]
    assert rows[0].split()[:2] == ["default", "1"] and rows[1].split()[:2] == ["mail", "1"]
    assert rows[1].split()[-2:] == ["-", "no"]  # the delayed job is not due: no age
    code, out, _ = run("stats", "--app", APP, "--json")
    assert json.loads(out)["mail"]["counts"]["pending"] == 1

    assert run("cancel", "--app", APP, delayed)[:2] == (0, f"cancelled {delayed}\n")
    code, _, err = run("cancel", "--app", APP, delayed)
    assert code == cli.EXIT_REFUSED and "it is cancelled, not pending" in err
    assert run("retry", "--app", APP, delayed)[0] == 0
    assert job_model.objects.get(id=delayed).status == "pending"
    code, _, err = run("retry", "--app", APP, "0123456789ab0123456789ab")
    assert code == cli.EXIT_REFUSED and "no such job" in err

    job_model.objects(id=job.id).update(set__status="completed", set__finished_at=job.run_at - timedelta(days=9))
    code, out, _ = run("purge", "--app", APP, "--older-than", "7d")
    assert code == 0 and out == "purged 1 job(s) finished before 7d ago\n"
    assert job_model.objects.count() == 1


class TenantJob(BaseJob):
    tenant = StringField(required=True)
    meta = {"collection": "cli_tenant_jobs", "db_alias": ALIAS}


def test_a_missing_required_field_is_named_with_where_to_set_it(job_model) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["enqueue", "signup"], queue=create_job_queue(job_model=TenantJob), out=out, err=err)
    assert code == cli.EXIT_USAGE and out.getvalue() == ""
    assert err.getvalue() == (
        "mongo-job-queue: error: job is missing required field 'tenant' of TenantJob "
        """(set the model's own fields with --fields '{"tenant": ...}')\n"""
    )


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["enqueue", "ok", "--app", APP, "--data", "[1]"], 2, "expected a JSON object"),
        (["enqueue", "ok", "--app", APP, "--fields", '{"status": "completed"}'], 2, "managed by the queue"),
        (
            ["enqueue", "ok", "--app", APP, "--fields", '{"organization": 12}'],
            2,
            "field 'organization' of IntegrationJob is invalid: StringField only accepts string values "
            """(set the model's own fields with --fields '{"organization": ...}')""",
        ),
        (
            ["enqueue", "ok", "--app", APP, "--fields", '{"organisation": "acme"}'],
            2,
            "IntegrationJob has no field 'organisation'; "
            "--fields takes only the fields IntegrationJob declares: organization, partition",
        ),
        (["purge", "--app", APP, "--older-than", "soon"], 2, "expected a duration"),
        (["retry", "--app", APP, "not-an-id"], 2, "not a job id"),
        (["worker", "--app", APP, "--concurrency", "0"], 2, "must be >= 1"),
        (["worker", "--app", APP, "--job-types", "nope"], 2, "no handler registered for job type(s) nope"),
        (["stats"], 2, "--app is required"),
        (["stats", "--app", "integration.missing:queue"], 3, "cannot import 'integration.missing'"),
        (["stats", "--app", "integration.cli_app:nothing"], 3, "has no attribute 'nothing'"),
        (["stats", "--app", "integration.cli_app:not_a_queue"], 3, "is a int, not a queue: --app takes a"),
        (["worker", "--app", "integration.cli_app:no_handlers"], 3, "no handler registered"),
        (["stats", "--app", "integration.cli_down:queue", "--db-timeout", "0.5"], 4, "database unreachable"),
        (["worker", "--app", "integration.cli_down:queue", "--db-timeout", "0.5"], 4, "database unreachable"),
        # Not a duration: bad usage (2), before any attempt to reach the database (4).
        (["stats", "--app", "integration.cli_down:queue", "--db-timeout", "nan"], 2, "expected a number of seconds"),
        (["stats", "--app", APP, "--db-timeout", "inf"], 2, "must be a finite number > 0"),
        (["stats", "--app", APP, "--db-timeout", "0"], 2, "must be a finite number > 0"),
        (["worker", "--app", APP, "--stop-timeout", "nan"], 2, "expected a number of seconds"),
        (["worker", "--app", APP, "--stop-timeout", "-1"], 2, "must be >= 0"),
    ],
)
def test_errors_are_one_line_with_a_distinct_exit_code(job_model, capsys, argv, code, message) -> None:
    got, _, err = run(*argv)
    err += capsys.readouterr().err  # argparse writes its own errors to sys.stderr
    assert got == code, err
    lines = err.strip().splitlines()  # argparse's own errors come after its usage lines
    assert message in lines[-1] and "error:" in lines[-1]
    assert "Traceback" not in err and sum("error:" in line for line in lines) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"priority": 9}, "--fields cannot set 'priority', managed by the queue (use --priority)"),
        ({"queue": "mail"}, "--fields cannot set 'queue', managed by the queue (use --queue)"),
        ({"data": {"x": 1}}, "--fields cannot set 'data', managed by the queue (use --data)"),
        ({"max_retries": 7}, "--fields cannot set 'max_retries', managed by the queue (use --max-retries)"),
        ({"delay_ms": 5}, "--fields cannot set 'delay_ms', managed by the queue (use --delay)"),
        ({"unique_key": "k"}, "--fields cannot set 'unique_key', managed by the queue (use --unique-key)"),
        ({"mutex_key": "k"}, "--fields cannot set 'mutex_key', managed by the queue (use --mutex-key)"),
        ({"time_limit_ms": 5}, "--fields cannot set 'time_limit_ms', managed by the queue (use --time-limit)"),
        ({"on_dependency_failure": "ignore"}, "--fields cannot set 'on_dependency_failure', managed by the queue;"),
        ({"id": "0123456789abcdef01234567"}, "--fields cannot set 'id', managed by the queue;"),
    ],
)
def test_fields_naming_an_enqueue_option_are_refused_with_nothing_written(job_model, fields, message) -> None:
    # An option name among --fields used to crash (TypeError, exit 1) or be applied silently as the option.
    code, out, err = run("enqueue", "ok", "--app", APP, "--fields", json.dumps({"organization": "acme", **fields}))
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        f"mongo-job-queue: error: {message}"
        + ("" if message.endswith(";") else ";")
        + " --fields takes only the fields IntegrationJob declares: organization, partition\n"
    )
    assert job_model.objects.count() == 0


def test_enqueue_sets_a_unique_key_a_mutex_key_and_a_time_limit_by_their_flags(job_model) -> None:
    argv = ["enqueue", "ok", "--app", APP, "--fields", '{"organization": "acme"}', "--unique-key", "report:acme"]
    code, out, err = run(*argv, "--unique-for", "1h", "--mutex-key", "acme", "--time-limit", "30s")
    assert code == 0, err
    job = job_model.objects.get(id=out.strip())
    assert (job.unique_key, job.mutex_key, job.time_limit_ms) == ("report:acme", "acme", 30_000)
    assert job.unique_until is not None
    code, again, _ = run(*argv)  # the same key while the first is unfinished: the first job, nothing new
    assert code == 0 and again == out and job_model.objects.count() == 1
    code, out, err = run("enqueue", "ok", "--app", APP, "--mutex-key", "", "--fields", '{"organization": "acme"}')
    assert (code, out) == (cli.EXIT_USAGE, "") and "mutex_key must be a non-empty str" in err
    assert job_model.objects.count() == 1


def test_burst_worker_runs_what_is_due_and_exits_0(job_model, spawn) -> None:
    queue = cli.load_queue(APP)
    for n in range(6):
        queue.enqueue("ok", {"n": n})
    queue.enqueue("fail", {}, max_retries=0)
    later = queue.enqueue("ok", {"n": 99}, delay_ms=600_000)
    other = queue.enqueue("ok", {"n": 100}, queue="elsewhere")
    proc = spawn("worker", "--app", APP, "--burst", "--concurrency", "3", "--log-level", "INFO")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert job_model.objects(status="completed").count() == 6
    assert job_model.objects(status="failed").count() == 1
    assert {job_model.objects.get(id=j.id).status for j in (later, other)} == {"pending"}
    assert "no job due and none running (burst)" in out


def test_max_jobs_and_job_types_limit_the_worker(job_model, spawn) -> None:
    queue = cli.load_queue(APP)
    for n in range(5):
        queue.enqueue("ok", {"n": n})
    skipped = queue.enqueue("sleep", {"ms": 1})
    proc = spawn("worker", "--app", APP, "--max-jobs", "3", "-c", "1", "--job-types", "ok", "-Q", "default,x")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert job_model.objects(status="completed").count() == 3
    assert job_model.objects.get(id=skipped.id).status == "pending"
    assert "queues=default,x types=ok" in out


def test_sigterm_is_graceful_and_a_second_signal_forces(job_model, spawn) -> None:
    queue = cli.load_queue(APP)
    job = queue.enqueue("sleep", {"ms": 60_000})
    proc = spawn("worker", "--app", APP, "--stop-timeout", "60")
    # Its handler runs: a job merely claimed when the signal comes is handed back, not waited for.
    wait_until(lambda: job_model._get_db()["handlers_started"].find_one({"job": job.id}), timeout=30)
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: proc.stdout is not None, timeout=5)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1)  # waiting for the running job, as the first signal asks
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == cli.EXIT_FORCED, out
    back = job_model.objects.get(id=job.id)
    assert back.status == "pending" and back.last_error.type.endswith("WorkerShutdown")
    assert "SIGTERM" in out and "again: stopping now" in out


def test_pause_resume_and_cancel_of_a_running_job(job_model) -> None:
    code, out, err = run("pause", "--app", APP, "--queue", "mail", "--type", "ok")
    assert code == 0, err
    assert out == "paused queues: mail; paused job types: ok\n"
    code, out, _ = run("resume", "--app", APP, "--type", "ok")
    assert code == 0 and out == "paused queues: mail; paused job types: none\n"
    code, _, err = run("pause", "--app", APP)
    assert code == cli.EXIT_USAGE and "needs --queue or --type" in err
    run("pause", "--app", APP, "--type", "fail")
    code, out, _ = run("stats", "--app", APP)
    assert code == 0
    _, mail, paused_types = out.splitlines()  # a paused queue is listed even when empty
    assert mail.split() == ["mail", "0", "0", "0", "0", "0", "0", "-", "yes"]
    assert paused_types == "paused job types: fail"
    run("resume", "--app", APP, "--queue", "mail", "--type", "fail")

    code, out, _ = run("enqueue", "ok", "--app", APP)
    running = out.strip()
    job_model.objects(id=running).update(set__status="processing", set__lease_token="t")
    code, out, _ = run("cancel", "--app", APP, running)
    assert code == 0 and out == f"cancellation requested for {running} (running)\n"
    assert job_model.objects.get(id=running).cancel_requested is True


SCHEDULED_APP = "integration.cli_app:with_schedules"


def test_schedules_lists_next_and_last_fire_times(job_model) -> None:
    assert run("schedules", "--app", APP) == (0, "(no schedules)\n", "")
    queue = cli.load_queue(SCHEDULED_APP)
    queue.fire_schedules()
    wait_until(lambda: [f for f in queue.fire_schedules() if f.enqueued], timeout=10, what="a fire of 'often'")
    code, out, err = run("schedules", "--app", SCHEDULED_APP)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "nightly: ok cron '0 3 * * *' in Europe/Paris"
    assert lines[1].startswith("  next fire  20") and lines[1].endswith(":00:00Z")
    assert lines[2] == "  last fire  -"
    assert lines[3] == "often: ok every 200 ms"
    assert "(pending, job " in lines[5]
    # From an app that does not register them, they are listed as known from the database.
    code, out, _ = run("schedules", "--app", APP, "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["often"]["registered"] is False and rows["often"]["next_fire"] is None
    assert rows["often"]["last_fire"].endswith("Z") and rows["often"]["last_status"] == "pending"
    assert rows["often"]["when"] == "every 200 ms" and rows["often"]["job_type"] == "ok"


@pytest.mark.parametrize("flag", [["--no-schedules"], []])
def test_a_worker_with_no_schedules_does_not_fire_them(job_model, flag) -> None:
    # A 2.5 s job keeps the burst worker up for about twelve fire times of 'often': its scheduler
    # fires at least once even when a loaded machine stretches its ticks (catch_up="once" fires
    # one job per tick however late, and a first tick only takes note of the schedule).
    assert run("enqueue", "sleep", "--app", APP, "--data", '{"ms": 2500}')[0] == 0
    code = cli.main(["worker", "--app", SCHEDULED_APP, "--burst", *flag], err=io.StringIO())
    assert code == 0
    fired = job_model.objects(schedule="often").count()
    assert (fired == 0) if flag else (fired >= 1), fired


def test_cancel_by_type_and_queue(job_model) -> None:
    for job_type, queue in (("ok", "mail"), ("ok", "mail"), ("ok", "default"), ("sleep", "mail")):
        assert run("enqueue", job_type, "--app", APP, "--queue", queue, "--data", '{"ms": 1}')[0] == 0
    assert run("cancel", "--app", APP, "--type", "ok", "--queue", "mail") == (0, "cancelled 2 pending job(s)\n", "")
    code, out, _ = run("cancel", "--app", APP, "--queue", "mail", "--running")
    assert code == 0 and out == "cancelled 1 pending job(s), cancellation requested for 0 running\n"
    assert job_model.objects(status="cancelled").count() == 3
    assert job_model.objects.get(status="pending").queue == "default"
    for bad in (["--type", "ok", "0123456789ab0123456789ab"], [], ["--running", "0123456789ab0123456789ab"]):
        code, _, err = run("cancel", "--app", APP, *bad)
        assert code == cli.EXIT_USAGE and "cancel takes job ids, or --type" in err
    assert job_model.objects(status="pending").count() == 1


@pytest.mark.parametrize(("value", "expected"), [("inf", math.inf), ("1e10", 1e10), ("0", 0.0)])
def test_stop_timeout_inf_means_wait_forever_and_is_passed_on(job_model, monkeypatch, value, expected) -> None:
    seen = {}

    def run_worker(queue, *, stop_timeout, **kwargs):
        seen["stop_timeout"] = stop_timeout
        return 0

    monkeypatch.setattr(cli.worker, "run_worker", run_worker)  # where the worker command calls it
    code, _, err = run("worker", "--app", APP, "--burst", "--stop-timeout", value)
    assert code == 0, err
    assert seen["stop_timeout"] == expected


FLASK_APP = "integration.cli_flask_app"


@pytest.mark.parametrize("name", [":create_app", ":app", ":single", ":single_app", ""])
def test_app_takes_a_flask_app_its_factory_or_the_extension(job_model, name) -> None:
    pytest.importorskip("flask")
    code, _, err = run("stats", "--app", FLASK_APP + name)
    assert code == 0, err


def test_a_worker_on_a_flask_factory_runs_handlers_in_the_app_context(job_model) -> None:
    pytest.importorskip("flask")
    code, out, err = run("enqueue", "ok", "--app", f"{FLASK_APP}:create_app")
    assert code == 0, err
    assert run("worker", "--app", f"{FLASK_APP}:create_app", "--burst", "--log-level", "WARNING")[0] == 0
    assert job_model.objects.get(id=out.strip()).result == {"app": "cli_flask_factory"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"{FLASK_APP}:lonely", "not initialised on any app yet (an app factory builds it later): pass the factory"),
        (f"{FLASK_APP}:twice", "initialised on 2 apps ('cli_flask_a', 'cli_flask_b'): pass the app"),
        (f"{FLASK_APP}:bare", "not initialised on Flask app 'cli_flask_bare': call init_app"),
        (f"{FLASK_APP}:jobz", f"has no attribute 'jobz'; try --app {FLASK_APP}:app (a Flask app)"),
        (f"{FLASK_APP}:CONFIG", "is a dict, not a queue: --app takes a PersistentJobQueue, a Flask app"),
        ("integration.models", "looks for one of queue, app, application, create_app, make_app in the module"),
        ("integration.cli_app:make_queue.nope", "has no attribute 'make_queue.nope'; try --app integration.cli_app:"),
    ],
)
def test_app_errors_say_what_to_pass(job_model, spec, message) -> None:
    pytest.importorskip("flask")
    code, _, err = run("stats", "--app", spec)
    assert code == cli.EXIT_IMPORT, err
    assert message in err and err.count("\n") == 1, err


def start_dev_server(*argv: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``mongo-job-queue dev-server ARGS`` in a child; its output up to the URI line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mongo_job_queue", "dev-server", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("MONGODB_URI="):
            return proc, lines
    proc.wait(timeout=30)
    raise AssertionError(f"dev-server exited with {proc.returncode}: {lines}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dev_server_serves_until_ctrl_c_and_keeps_its_data(tmp_path) -> None:
    pytest.importorskip("secantus")
    port, data = free_port(), tmp_path / "data"
    proc, lines = start_dev_server("--port", str(port), "--data", str(data))
    try:
        assert "licensed GPL-2.0" in lines[0] and "for development and tests only" in lines[0]
        assert lines[1] == f"data in {data}"
        uri = lines[-1].removeprefix("MONGODB_URI=")
        assert uri.startswith(f"mongodb://127.0.0.1:{port}")
        with MongoClient(uri, serverSelectionTimeoutMS=5_000) as client:
            client.app.jobs.insert_one({"_id": 1, "kept": True})
        # The same port again: refused in one line, exit 2.
        busy = subprocess.run(
            [sys.executable, "-m", "mongo_job_queue", "dev-server", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert busy.returncode == cli.EXIT_USAGE
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "pass --port" in busy.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopping" in out
    proc, lines = start_dev_server("--port", "0", "--data", str(data))  # any free port, the same data
    try:
        with MongoClient(lines[-1].removeprefix("MONGODB_URI="), serverSelectionTimeoutMS=5_000) as client:
            assert client.app.jobs.find_one({"_id": 1}) == {"_id": 1, "kept": True}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_dev_server_without_data_removes_its_directory(tmp_path, monkeypatch) -> None:
    pytest.importorskip("secantus")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    proc, lines = start_dev_server("--port", "0")
    assert "temporary directory, deleted at exit" in lines[1]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("mjq-dev-server-")]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("mjq-dev-server-")]
