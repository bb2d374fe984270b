"""Inspecting jobs and workers from the shell, over the wire: jobs list/show, workers, bulk retry, admin."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from helpers import wait_until

from mongo_job_queue import cli

pytestmark = pytest.mark.integration

APP = "integration.cli_app:make_queue"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def ids_listed(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:] if not line.startswith("(")]


@pytest.fixture
def failed_jobs(job_model):
    """Three failed ``fail`` jobs (two of acme), a failed ``ok`` one, a completed one and a pending one."""
    queue = cli.load_queue(APP)
    fail = [queue.enqueue("fail", {"n": n}, max_retries=0, organization=org) for n, org in enumerate("aab")]
    other = queue.enqueue("ok", {"n": 9}, max_retries=0, queue="mail")
    done = queue.enqueue("ok", {"n": 1})
    assert queue.drain() == 4  # the worker claims from "default" only
    job_model.objects(id=other.id).update(set__status="failed")
    pending = queue.enqueue("ok", {"n": 2}, organization="a")
    return {"fail": [j.id for j in fail], "other": other.id, "done": done.id, "pending": pending.id}


def test_jobs_list_filters_newest_first(job_model, failed_jobs) -> None:
    fail = [str(i) for i in failed_jobs["fail"]]
    code, out, err = run("jobs", "list", "--app", APP, "--status", "failed", "--type", "fail")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATUS", "TYPE", "QUEUE", "ATTEMPTS", "CREATED", "LAST", "ERROR"]
    assert ids_listed(out) == fail[::-1]
    assert rows[0].split()[1:5] == ["failed", "fail", "default", "1"]
    assert rows[0].endswith("FailJob: always fails") and rows[0].split()[5].endswith("Z")
    # The app's own field (not indexed: a scan bounded by maxTimeMS), with or without a status.
    code, out, _ = run("jobs", "list", "--app", APP, "--field", "organization=a")
    assert code == 0 and ids_listed(out) == [str(failed_jobs["pending"]), fail[1], fail[0]]
    assert ids_listed(run("jobs", "list", "--app", APP, "--field", "organization=a", "--status", "failed")[1]) == [
        fail[1],
        fail[0],
    ]
    code, out, _ = run("jobs", "list", "--app", APP, "--queue", "mail", "--status", "failed,completed")
    assert code == 0 and ids_listed(out) == [str(failed_jobs["other"])]
    code, out, _ = run("jobs", "list", "--app", APP, "--limit", "2")
    assert code == 0 and len(ids_listed(out)) == 2 and out.endswith("(the newest 2; --limit shows more)\n")
    assert run("jobs", "list", "--app", APP, "--since", "1h")[1].count("\n") == 1 + 6
    code, out, _ = run(
        "jobs", "list", "--app", APP, "--since", (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    )
    assert code == 0 and out == "(no job matches)\n"
    code, out, _ = run("jobs", "list", "--app", APP, "--type", "fail", "--json", "--limit", "1")
    assert code == 0
    [row] = json.loads(out)
    assert row["_id"] == fail[2] and row["organization"] == "b" and row["last_error"]["type"].endswith("FailJob")
    assert "data" not in row and "errors" not in row and "traceback" not in row["last_error"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--field", "colour=red"],
            "--field: 'colour' is not a field of IntegrationJob (its own fields are organization, partition)",
        ),
        (["--field", "status=failed"], "--field: 'status' is not a field of IntegrationJob"),
        (["--field", "organization"], "expected NAME=VALUE"),
        (["--status", "failed,lost"], "unknown status 'lost'"),
        (["--since", "yesterday"], "expected a duration like 2h or 7d, or a date and time"),
        (["--limit", "1001"], "--limit must be at most 1000"),
        # After the last time a job id can hold (year 10000 in UTC, or 2106): one line, no traceback.
        (["--since", "9999-12-31T23:59-05:00"], "expected a date and time up to 2106-02-07T06:28:15 UTC"),
        (["--since", "2106-02-07T06:28:16"], "expected a date and time up to 2106-02-07T06:28:15 UTC"),
    ],
)
def test_jobs_list_refuses_what_it_cannot_filter_on(job_model, capsys, argv, message) -> None:
    code, _, err = run("jobs", "list", "--app", APP, *argv)
    err += capsys.readouterr().err
    assert code == cli.EXIT_USAGE and message in err.strip().splitlines()[-1], err


@pytest.mark.parametrize(
    "since", ["1960-01-01T00:00", "1969-12-31T23:59", "0001-01-01T00:00+05:00", "30000d", "100000d", "10000000000000d"]
)
def test_since_before_1970_is_every_job(job_model, failed_jobs, monkeypatch, since) -> None:
    # A job id holds no time before 1970: these crashed (exit 1, or a traceback); they mean every job.
    code, out, err = run("jobs", "list", "--app", APP, "--since", since)
    assert (code, err) == (0, "") and len(ids_listed(out)) == 6
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, out, err = run("retry", "--app", APP, "--status", "failed", "--since", since)
    assert (code, out) == (0, "retried 4 job(s)\n"), err
    assert err == "retry 4 failed job(s) created since 1970-01-01T00:00:00Z? [y/N] "
    assert job_model.objects(status="failed").count() == 0


def test_jobs_show_has_data_errors_lease_progress_and_result(job_model, failed_jobs) -> None:
    failed = str(failed_jobs["fail"][0])
    code, out, err = run("jobs", "show", "--app", APP, failed)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"job {failed}"
    assert "  type         fail" in lines and "  status       failed" in lines
    assert "  attempts     1 (max_retries 0)" in lines and "  organization a" in lines
    assert any(line.startswith("  lease        last held by ") for line in lines)
    assert lines[lines.index("  data") + 1 : lines.index("  data") + 4] == ["    {", '      "n": 0', "    }"]
    assert "  errors       1" in lines
    assert any(
        line.startswith("    attempt 1, 20") and line.endswith("mongo_job_queue.errors.FailJob") for line in lines
    )
    assert "      always fails" in lines and "      Traceback (most recent call last):" in lines

    done = failed_jobs["done"]
    job_model.objects(id=done).update(set__progress={"percent": 75, "message": "step 3/4", "at": datetime(2026, 5, 1)})
    code, out, _ = run("jobs", "show", "--app", APP, str(done))
    assert code == 0 and "  progress     75% step 3/4 (at 2026-05-01T00:00:00Z)" in out.splitlines()
    assert '  result\n    {\n      "echo": 1\n    }\n  errors       none\n' in out
    code, out, _ = run("jobs", "show", "--app", APP, str(done), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["_id"] == str(done) and doc["result"] == {"echo": 1} and doc["progress"]["at"] == "2026-05-01T00:00:00Z"

    code, _, err = run("jobs", "show", "--app", APP, "0123456789ab0123456789ab")
    assert code == cli.EXIT_REFUSED and err == "no such job: 0123456789ab0123456789ab\n"
    assert run("jobs", "show", "--app", APP, "nope")[0] == cli.EXIT_USAGE


def test_bulk_retry_retries_the_confirmed_set(job_model, failed_jobs, monkeypatch) -> None:
    fail = failed_jobs["fail"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, out, err = run("retry", "--app", APP, "--status", "failed", "--type", "fail")
    assert code == cli.EXIT_REFUSED and out == ""
    assert err.startswith("retry 3 failed job(s) of type fail? [y/N] nothing retried (not confirmed; --yes")
    assert job_model.objects(status="failed").count() == 4

    # While the prompt waits, a fourth job starts to match: the answer covers the three that were counted.
    late = []

    class Answer:
        def readline(self) -> str:
            job = cli.load_queue(APP).enqueue("fail", {}, max_retries=0)
            job_model.objects(id=job.id).update(set__status="failed")
            late.append(job.id)
            return "y\n"

    monkeypatch.setattr(sys, "stdin", Answer())
    code, out, err = run("retry", "--app", APP, "--status", "failed", "--type", "fail", "--since", "1h")
    assert code == 0, err
    assert err.startswith("retry 3 failed job(s) of type fail created since 20") and err.endswith("? [y/N] ")
    assert out == "retried 3 job(s)\n"
    assert {job_model.objects.get(id=i).status for i in fail} == {"pending"}
    assert job_model.objects.get(id=fail[0]).attempts == 0
    assert job_model.objects.get(id=late[0]).status == "failed"
    assert job_model.objects.get(id=failed_jobs["other"]).status == "failed"

    # --yes asks nothing; the default statuses are failed and cancelled; --field narrows.
    job_model.objects(id=failed_jobs["pending"]).update(set__status="cancelled")
    code, out, err = run("retry", "--app", APP, "--field", "organization=a", "--yes")
    assert (code, out, err) == (0, "retried 1 job(s)\n", "")
    assert job_model.objects.get(id=failed_jobs["pending"]).status == "pending"
    assert run("retry", "--app", APP, "--type", "nothing", "--yes")[1] == (
        "no failed or cancelled job(s) of type nothing to retry\n"
    )
    for bad in (["--type", "fail", str(fail[0])], []):
        code, _, err = run("retry", "--app", APP, *bad)
        assert code == cli.EXIT_USAGE and "retry takes job ids, or a filter" in err


def test_workers_lists_the_live_ones(job_model, make_queue) -> None:
    assert run("workers", "--app", APP) == (0, "(no live worker)\n", "")
    queue = make_queue(worker_id="cli-w1", concurrency=3, queues=["default", "mail"])
    queue.register_handler("noop", lambda job: None)
    queue.start_polling()
    out = wait_until(lambda: (r := run("workers", "--app", APP)[1]) and "cli-w1" in r and r, what="the worker listed")
    header, row = out.splitlines()
    assert header.split() == ["STATE", "WORKER", "HOST", "PID", "QUEUES", "TYPES", "RUNNING", "STARTED", "LAST", "SEEN"]
    assert row.split()[:7] == ["live", "cli-w1", socket.gethostname(), str(os.getpid()), "default,mail", "noop", "0/3"]
    assert queue.stop(timeout=10)
    assert run("workers", "--app", APP)[1] == "(no live worker)\n"
    code, out, _ = run("workers", "--app", APP, "--all", "--json")
    assert code == 0
    [worker] = json.loads(out)
    assert worker["state"] == "stopped" and worker["worker_id"] == "cli-w1" and worker["stopped_at"].endswith("Z")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_admin_refuses_without_insecure_local(job_model) -> None:
    code, out, err = run("admin", "--app", APP)
    assert code == cli.EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and "needs an authorize callable" in err and "docs/admin.rst" in err
    assert "--insecure-local" in err
    code, _, err = run("admin", "--app", APP, "--insecure-local", "--host", "0.0.0.0")
    assert code == cli.EXIT_USAGE and "loopback address only" in err


def test_admin_serves_the_ui_with_insecure_local(job_model, spawn) -> None:
    pytest.importorskip("jinja2")
    queue = cli.load_queue(APP)
    job = queue.enqueue("ok", {"n": 1})
    port = free_port()
    proc = spawn("admin", "--app", APP, "--port", str(port), "--insecure-local")

    def page() -> str:
        # The job list of the queue of collection "jobs".
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs/jobs", timeout=5) as reply:
            assert reply.status == 200
            return str(reply.read().decode())

    def up() -> str | None:
        assert proc.poll() is None, proc.communicate(timeout=5)[0]
        try:
            return page()
        except OSError:
            return None

    html = wait_until(up, timeout=30, what="the admin server")
    assert str(job.id) in html
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "without authentication" in out


def test_bulk_retry_leaves_alone_the_counted_jobs_that_changed_before_the_answer(job_model, monkeypatch) -> None:
    """The answer covers the jobs as counted: one retried and failed again, or edited out of the filter, is left alone.

    The retry filtered only by id and status, so both were retried on an
    answer given about other facts (found by the review of the CLI).
    """
    queue = cli.load_queue(APP)
    refailed = queue.enqueue("fail", {}, max_retries=0, organization="a")
    edited = queue.enqueue("fail", {}, max_retries=0, organization="a")
    kept = queue.enqueue("fail", {}, max_retries=0, organization="a")
    assert queue.drain() == 3

    class Answer:
        def readline(self) -> str:
            other = cli.load_queue(APP)  # another operator, meanwhile
            assert other.retry_job(refailed.id) and other.drain() == 1  # it ran and failed again
            job_model.objects(id=edited.id).update(set__organization="b")
            return "y\n"

    monkeypatch.setattr(sys, "stdin", Answer())
    code, out, err = run("retry", "--app", APP, "--field", "organization=a")
    assert code == 0 and "retry 3 " in err, err
    assert "retried 1 job(s); 2 of them changed since they were counted" in out, out
    assert job_model.objects.get(id=kept.id).status == "pending"
    assert job_model.objects.get(id=refailed.id).status == "failed"
    assert job_model.objects.get(id=edited.id).status == "failed"
