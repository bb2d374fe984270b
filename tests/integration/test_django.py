"""The Django app in-process: ready(), autodiscovery, the registry module, boot decisions, run_job_worker.

The job model's alias points at a server that does not exist, so any
database access in ``ready()`` would take seconds and fail: setup must be
instant. The e2e tests run a real project against the wire server.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

DOWN_URI = "mongodb://127.0.0.1:1/down"  # what integration.cli_down registers: nothing listens on port 1


@pytest.fixture(scope="module")
def django_setup():
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["integration.django_app", "mongo_job_queue.contrib.django"],
            MONGO_JOB_QUEUE={
                "MODEL": "integration.cli_down:DownJob",
                "AUTOSTART": True,  # declined: this is a test run
                "REGISTRY_MODULES": ["integration.django_registry"],
                "CONFIG": {"concurrency": 2},
            },
        )
    started = time.monotonic()
    django.setup()
    return time.monotonic() - started


def test_ready_registers_handlers_without_touching_the_database(django_setup, caplog) -> None:
    from django.apps import apps

    from mongo_job_queue.contrib.django import get_queue

    assert django_setup < 5  # an unreachable server would have cost a server selection timeout
    queue = get_queue()
    assert queue.registry.types() == ["dj_app_job", "dj_nightly", "dj_plain_job"]
    assert [s.name for s in queue.scheduler.all()] == ["dj_nightly", "dj_sync"]
    assert queue.scheduler.get("dj_nightly").when == "cron '0 3 * * *' in Europe/Paris"
    assert not queue.running
    apps.get_app_config("mongo_job_queue").ready()  # idempotent: no duplicate registration error
    from integration.django_app import jobs

    assert jobs.IMPORTS == [1]
    assert queue.config.concurrency == 2
    # The registry module adds the tracing middleware, as docs/django.rst shows: once, however often ready() runs.
    otel = pytest.importorskip("mongo_job_queue.contrib.otel")
    assert sum(isinstance(m, otel.OpenTelemetryMiddleware) for m in queue.hooks.items) == 1


def test_boot_decisions() -> None:
    from mongo_job_queue.contrib._boot import Start
    from mongo_job_queue.contrib.django import decide_start

    def when(argv, environ=None, autostart=True, pytest_=False):
        return decide_start(autostart, argv, environ or {}, under_pytest=pytest_).when

    assert when(["manage.py", "runserver"], autostart=False) is Start.NEVER
    assert when(["manage.py", "runserver"], pytest_=True) is Start.NEVER
    assert when(["manage.py", "test"]) is Start.NEVER
    assert when(["manage.py", "migrate"]) is Start.NEVER
    assert when(["manage.py", "shell"]) is Start.NEVER
    assert when(["manage.py", "run_job_worker"]) is Start.NEVER  # it runs its own worker
    assert when(["manage.py", "runserver"]) is Start.NEVER  # the autoreloader's watcher
    assert when(["manage.py", "runserver"], {"RUN_MAIN": "true"}) is Start.NOW
    assert when(["manage.py", "runserver", "--noreload", "127.0.0.1:8000"]) is Start.NOW
    assert when(["/venv/bin/gunicorn", "project.wsgi"]) is Start.LAZY
    reason = decide_start(True, ["manage.py", "migrate"], {}, under_pytest=False).reason
    assert reason == "'manage.py migrate' is not a server"


def test_run_job_worker_exit_codes(django_setup, capsys) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(SystemExit) as exc:
        call_command("run_job_worker", "--db-timeout", "0.5")
    assert exc.value.code == 4
    assert "database unreachable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        call_command("run_job_worker", "--job-types", "nope")
    assert exc.value.code == 2
    with pytest.raises(CommandError, match="must be >= 1"):
        call_command("run_job_worker", "--concurrency", "0")


def test_manage_py_mongo_job_queue_is_the_whole_cli_on_the_project_queue(django_setup, capsys) -> None:
    from django.core.management import call_command

    from mongo_job_queue.cli.commands import ADMIN_COMMANDS

    # Every command of the CLI goes through, on the project's queue: here its database is unreachable (exit 4).
    for command in sorted(ADMIN_COMMANDS):
        call_command("mongo_job_queue", command, "--help")  # exit 0: no SystemExit
        shown = capsys.readouterr().out
        assert f"usage: manage.py mongo_job_queue {command}" in shown and "--app" not in shown.split("exit codes")[0]
    with pytest.raises(SystemExit) as exc:
        call_command("mongo_job_queue", "stats", "--db-timeout", "0.5")
    assert exc.value.code == 4
    assert "manage.py mongo_job_queue: error: database unreachable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        call_command("mongo_job_queue", "worker", "--job-types", "nope")
    assert exc.value.code == 2 and "no handler registered for job type(s) nope" in capsys.readouterr().err
    # As manage.py runs it: the CLI's parser reads everything after the command's name, --help included.
    from django.core.management import load_command_class

    load_command_class("mongo_job_queue.contrib.django", "mongo_job_queue").run_from_argv(
        ["manage.py", "mongo_job_queue", "--help", "--settings", "ignored.settings"]
    )
    listed = capsys.readouterr().out
    assert listed.startswith("usage: manage.py mongo_job_queue [-h] COMMAND")
    assert all(command in listed for command in [*ADMIN_COMMANDS, "worker"])


def test_manage_py_mongo_job_queue_has_the_inspection_and_admin_commands(django_setup, capsys) -> None:
    from django.core.management import call_command

    for command in (["jobs", "list"], ["jobs", "show"], ["workers"], ["admin"]):
        call_command("mongo_job_queue", *command, "--help")
        shown = capsys.readouterr().out
        assert f"usage: manage.py mongo_job_queue {' '.join(command)}" in shown
    # Forwarded and run on the project's queue, whose database is unreachable here (exit 4).
    for command in (["jobs", "list", "--status", "failed"], ["jobs", "show", "0123456789ab0123456789ab"], ["workers"]):
        with pytest.raises(SystemExit) as exc:
            call_command("mongo_job_queue", *command, "--db-timeout", "0.5")
        assert exc.value.code == 4
        assert "manage.py mongo_job_queue: error: database unreachable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        call_command("mongo_job_queue", "retry", "--status", "failed", "--yes", "--db-timeout", "0.5")
    assert exc.value.code == 4
    capsys.readouterr()
    # The admin UI refuses to run open before it needs the database.
    with pytest.raises(SystemExit) as exc:
        call_command("mongo_job_queue", "admin")
    assert exc.value.code == 2 and "needs an authorize callable" in capsys.readouterr().err


def test_the_django_command_strips_the_options_manage_py_applied() -> None:
    from mongo_job_queue.contrib.django.management.commands.mongo_job_queue import _without_django_globals

    argv = ["stats", "--settings", "project.settings", "--json", "--pythonpath=/srv", "--db-timeout", "1"]
    assert _without_django_globals(argv) == ["stats", "--json", "--db-timeout", "1"]


@pytest.mark.parametrize("spec", ["mongo_job_queue.contrib.django", "mongo_job_queue.contrib.django:get_queue"])
def test_app_takes_the_django_integration(django_setup, spec) -> None:
    from mongo_job_queue import cli
    from mongo_job_queue.contrib.django import get_queue

    queue = cli.load_queue(spec)
    assert queue is get_queue()
    assert queue.registry.types() == ["dj_app_job", "dj_nightly", "dj_plain_job"]


def test_settings_are_checked(django_setup) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from mongo_job_queue.contrib.django import settings_dict

    unknown = override_settings(MONGO_JOB_QUEUE={"MODEL": "x:Y", "AUTOSTARTS": True})
    with unknown, pytest.raises(ImproperlyConfigured, match=r"unknown key.*AUTOSTARTS"):
        settings_dict()
    no_model = override_settings(MONGO_JOB_QUEUE={"AUTOSTART": True})
    with no_model, pytest.raises(ImproperlyConfigured, match=r"\['MODEL'\] is required"):
        settings_dict()


@pytest.mark.parametrize(("key", "value"), [("AUTOSTART", "false"), ("AUTOSTART", 1), ("AUTODISCOVER", "no")])
def test_the_flags_must_be_true_or_false(django_setup, key, value) -> None:
    """A string from an environment variable ("false") is truthy: it must not start a worker."""
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from mongo_job_queue.contrib import django as mjq_django

    with override_settings(MONGO_JOB_QUEUE={"MODEL": "integration.cli_down:DownJob", key: value}):
        with pytest.raises(ImproperlyConfigured, match=rf"\['{key}'\] must be True or False, got {value!r}"):
            mjq_django.settings_dict()
        with pytest.raises(ImproperlyConfigured, match=rf"\['{key}'\] must be True or False"):
            mjq_django._on_ready()


@pytest.mark.parametrize(("key", "value"), [("MONGODB_URI", 5), ("MONGODB_URI", [DOWN_URI]), ("MONGODB_DB", 5)])
def test_the_connection_settings_must_be_strings(django_setup, monkeypatch, key, value) -> None:
    """An ImproperlyConfigured naming the setting, not MongoEngine's TypeError."""
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from mongo_job_queue.contrib import django as mjq_django

    monkeypatch.setattr(mjq_django, "_queue", None)
    monkeypatch.setattr(mjq_django, "_starter", None)
    conf = {"MODEL": "integration.cli_down:DownJob", "MONGODB_URI": DOWN_URI, key: value}
    refused = pytest.raises(ImproperlyConfigured, match=rf"\['{key}'\] must be a string or None, got ")
    with override_settings(MONGO_JOB_QUEUE=conf), refused:
        mjq_django.get_queue()


def test_a_lazy_start_that_fails_never_fails_a_request(django_setup, monkeypatch) -> None:
    """Django sends request_started with send(), not send_robust(): a raising receiver fails the request."""
    import threading

    from django.core.signals import request_started
    from django.test import Client, override_settings

    from mongo_job_queue.contrib import django as mjq_django
    from mongo_job_queue.contrib._boot import Start, StartDecision

    # As under gunicorn: the worker starts at the first request; its database (port 1) is unreachable.
    monkeypatch.setattr(mjq_django, "decide_start", lambda autostart: StartDecision(Start.LAZY, "as under gunicorn"))
    mjq_django._on_ready()
    starter = mjq_django._starter
    assert starter is not None
    try:
        with override_settings(ROOT_URLCONF="integration.django_urls", ALLOWED_HOSTS=["testserver"]):
            client = Client()
            for _ in range(5):
                started = time.monotonic()
                assert client.get("/health").status_code == 200
                assert time.monotonic() - started < 1.0  # not a server selection timeout
        assert starter.retrying and not mjq_django.get_queue().running
        assert len([t for t in threading.enumerate() if t.name == "mjq-autostart"]) == 1  # one, not one per request
    finally:
        request_started.disconnect(dispatch_uid="mongo_job_queue_lazy_start")
        starter._lazy = False
        starter.stop_retrying()


def test_stop_timeout_accepts_inf_and_none_and_refuses_nan(django_setup, monkeypatch) -> None:
    import math

    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from mongo_job_queue.contrib import django as mjq_django

    def built(stop_timeout):
        monkeypatch.setattr(mjq_django, "_queue", None)
        monkeypatch.setattr(mjq_django, "_starter", None)
        conf = {"MODEL": "integration.cli_down:DownJob", "STOP_TIMEOUT": stop_timeout}
        with override_settings(MONGO_JOB_QUEUE=conf):
            mjq_django.get_queue()
        return mjq_django._starter.stop_timeout

    assert built(math.inf) == math.inf
    assert built(None) == math.inf
    assert built(12) == 12.0
    for bad in (float("nan"), -1, "30"):
        with pytest.raises(ImproperlyConfigured, match=r"STOP_TIMEOUT'\] must be a number >= 0"):
            built(bad)
