"""The forwarding public methods: typed with the one parameter list they pass their arguments to, and shown with it."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

from helpers import mypy_strict

from mongo_job_queue import PersistentJobQueue, create_job_queue
from mongo_job_queue.contrib.admin import create_admin_app


def test_the_forwarding_methods_show_the_parameters_they_take(queue: Any) -> None:
    assert list(inspect.signature(queue.register_handler).parameters) == [
        "job_type", "fn", "stop", "wait", "retry", "max_retries", "time_limit_ms"
    ]  # fmt: skip
    assert list(inspect.signature(queue.handler).parameters) == [
        "job_type", "stop", "wait", "retry", "max_retries", "time_limit_ms"
    ]  # fmt: skip
    schedule = inspect.signature(PersistentJobQueue.schedule)
    assert list(schedule.parameters)[:5] == ["self", "name", "cron_expression", "job_type", "data"]
    assert "misfire_grace_ms" in schedule.parameters and "extra_fields" in schedule.parameters
    assert inspect.signature(PersistentJobQueue.periodic).parameters == schedule.parameters
    assert "config" in inspect.signature(create_job_queue).parameters
    assert "allowed_hosts" in inspect.signature(create_admin_app).parameters


def test_a_wrong_keyword_or_type_fails_under_mypy_strict(tmp_path: Path) -> None:
    good = textwrap.dedent(
        """
        from mongo_job_queue import BaseJob, Schedule, create_job_queue
        from mongo_job_queue.contrib.flask import MongoJobQueue

        class MailJob(BaseJob):
            meta = {"collection": "typed_forwarding"}

        queue = create_job_queue(job_model=MailJob, config={"lease_ms": 30_000})

        def send(job: MailJob) -> str:
            return "sent"

        same = queue.register_handler("send", send, max_retries=2, time_limit_ms=1_000)
        kept: str = same(MailJob())

        @queue.handler("other", max_retries=1)
        def other(job: MailJob) -> int:
            return 1

        number: int = other(MailJob())
        schedule: Schedule = queue.schedule("nightly", "0 3 * * *", "send", {"a": 1}, timezone="Europe/Paris")

        @queue.periodic("cleanup", every_ms=60_000, queue="maintenance", tenant="ops")
        def cleanup(job: MailJob) -> None: ...

        jobs = MongoJobQueue(job_model=MailJob)
        jobs.schedule("digest", "0 7 * * *", job_type="send", priority=1)
        """
    )
    bad = good + textwrap.dedent(
        """
        queue.register_handler("x", send, max_retry=2)
        queue.handler("y", time_limit_ms="1s")
        queue.schedule("z", every_ms="60s")
        queue.periodic("w", every_ms=1_000, priority="high")
        create_job_queue(job_model=MailJob, configuration={})
        jobs.schedule("v", catch_up_limit="all")
        """
    )
    (tmp_path / "good.py").write_text(good)
    (tmp_path / "bad.py").write_text(bad)
    assert mypy_strict(tmp_path / "good.py").returncode == 0
    checked = mypy_strict(tmp_path / "bad.py")
    assert checked.returncode == 1, checked.stdout
    out = checked.stdout
    assert 'Unexpected keyword argument "max_retry" for "register_handler"' in out, out
    assert 'bad.py:30: error: Argument "time_limit_ms" has incompatible type "str"' in out, out
    assert 'Argument "every_ms" to "schedule" of "PersistentJobQueue" has incompatible type "str"' in out, out
    assert 'Argument "priority" to "periodic" of "PersistentJobQueue" has incompatible type "str"' in out, out
    assert 'Unexpected keyword argument "configuration" for "create_job_queue"' in out, out
    assert 'Argument "catch_up_limit" to "schedule" of "MongoJobQueue" has incompatible type "str"' in out, out
