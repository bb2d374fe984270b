"""Task handles, and job types that no handler is known for: warned about once, or refused with ``strict_types``."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tenacity
from conftest import OrgJob, raw_docs

from mongo_job_queue import HandlerError, InvalidJobError, Task
from mongo_job_queue.known_types import KnownTypes
from mongo_job_queue.store.workers import WorkerDocs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_workers() -> Iterator[None]:
    workers = OrgJob._get_db()[f"{OrgJob._get_collection_name()}_workers"]
    workers.delete_many({})
    yield
    workers.delete_many({})


def _register_worker(queue: Any, *job_types: str) -> None:
    """A worker of another process in the registry, claiming ``job_types``.

    Seen by the real clock: mongomock applies the registry's TTL index by it,
    and would remove a worker last seen at the fake clock's date.
    """
    seen = datetime.now(timezone.utc).replace(tzinfo=None)
    fields = {"worker_id": "w1", "host": "h", "pid": 1, "queues": ["default"], "job_types": list(job_types)}
    WorkerDocs(queue.store).collection.insert_one({"_id": "w1@h:1", **fields, "last_seen": seen, "started_at": seen})


def _warnings(caplog: pytest.LogCaptureFixture, job_type: str) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [m for m in messages if f"{job_type!r}" in m]


# -- task handles ---------------------------------------------------------------


def test_a_task_registers_its_handler_and_enqueues_its_own_type(queue: Any) -> None:
    @queue.task("send_email", max_retries=5, time_limit_ms=2_000, wait=tenacity.wait_fixed(0))
    def send_email(job: Any) -> str:
        """Send one email."""
        return f"sent to {job.data['to']}"

    assert isinstance(send_email, Task) and send_email.job_type == "send_email"
    assert send_email.__name__ == "send_email" and send_email.__doc__ == "Send one email."
    handler = queue.registry.get("send_email")
    assert handler.fn is send_email.fn and handler.max_retries == 5 and handler.time_limit_ms == 2_000
    job = send_email.enqueue({"to": "a@example.com"}, priority=3, queue="mail", organization="acme", delay_ms=0)
    assert (job.type, job.priority, job.queue, job.organization) == ("send_email", 3, "mail", "acme")
    assert send_email(job) == "sent to a@example.com"  # calling the handle runs the function here
    assert queue.job_model.objects.count() == 1  # and enqueues nothing


def test_a_task_s_enqueue_many_makes_one_job_per_payload_with_common_options(queue: Any) -> None:
    resize = queue.task("resize")(lambda job: None)
    jobs = resize.enqueue_many([{"id": 1}, {"id": 2}, None], queue="images", max_retries=1, time_limit_ms=500)
    assert [j.data for j in jobs] == [{"id": 1}, {"id": 2}, {}]
    docs = raw_docs()
    assert {d["type"] for d in docs} == {"resize"} and {d["queue"] for d in docs} == {"images"}
    assert {d["max_retries"] for d in docs} == {1} and {d["time_limit_ms"] for d in docs} == {500}
    with pytest.raises(InvalidJobError, match=r"jobs\[1\]"):
        resize.enqueue_many([{"id": 3}, {"bad": {1, 2}}])
    assert len(raw_docs()) == 3  # nothing of the invalid batch


def test_a_task_runs_under_the_queue_like_any_handler(queue: Any) -> None:
    double = queue.task("double")(lambda job: job.data["n"] * 2)
    job = double.enqueue({"n": 21})
    assert queue.run_once().result == 42
    assert queue.get_job(job.id).status == "completed"
    assert queue.enqueue("double", {"n": 1}).type == "double"  # the string type still works


def test_an_invalid_task_registers_nothing(queue: Any) -> None:
    with pytest.raises(HandlerError):
        queue.task("", max_retries=1)(print)
    with pytest.raises(HandlerError, match="time_limit_ms"):
        queue.task("t", time_limit_ms=-5)(print)
    queue.task("t")(print)
    with pytest.raises(HandlerError, match="already registered"):
        queue.task("t")(print)
    assert queue.registry.types() == ["t"]


def test_task_handles_type_check_under_mypy_strict(tmp_path: Path) -> None:
    good = textwrap.dedent(
        """
        from mongo_job_queue import BaseJob, Task, create_job_queue

        class MailJob(BaseJob):
            meta = {"collection": "typed_mail"}

        queue = create_job_queue(job_model=MailJob)

        @queue.task("send_email", max_retries=2, time_limit_ms=1_000)
        def send_email(job: MailJob) -> str:
            return "sent"

        handle: Task[MailJob, str] = send_email
        job: MailJob = send_email.enqueue({"to": "a"}, delay_ms=5, queue="mail")
        jobs: list[MailJob] = send_email.enqueue_many([{"to": "a"}], priority=1)
        result: str = send_email(job)
        """
    )
    bad = good + textwrap.dedent(
        """
        wrong: int = send_email(job)
        send_email.enqueue(42)
        send_email(42)
        """
    )
    (tmp_path / "good.py").write_text(good)
    (tmp_path / "bad.py").write_text(bad)

    def mypy(name: str) -> subprocess.CompletedProcess[str]:
        # strict comes from the config, which also allows subclassing MongoEngine's untyped bases.
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        return subprocess.run([*command, str(tmp_path / name)], capture_output=True, text=True, cwd=ROOT, check=False)

    checked = mypy("good.py")
    assert checked.returncode == 0, checked.stdout
    checked = mypy("bad.py")
    assert checked.returncode == 1
    assert 'expression has type "str", variable has type "int"' in checked.stdout
    assert 'Argument 1 to "enqueue" of "Task" has incompatible type "int"' in checked.stdout
    assert 'incompatible type "int"; expected "MailJob"' in checked.stdout


# -- job types nobody handles ------------------------------------------------------


def test_an_unknown_type_is_warned_about_once_and_still_enqueued(queue: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        queue.enqueue("snd_email", {})
        queue.enqueue("snd_email", {})
        queue.enqueue_many([{"job_type": "snd_email"}, {"job_type": "rport"}])
    assert len(_warnings(caplog, "snd_email")) == 1 and len(_warnings(caplog, "rport")) == 1
    assert "check its spelling" in _warnings(caplog, "snd_email")[0]
    assert len(raw_docs()) == 4


def test_a_type_handled_here_or_by_a_registered_worker_is_not_warned_about(
    make_queue: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = make_queue()
    _register_worker(web, "report")
    reads: list[int] = []
    listing = WorkerDocs.list
    monkeypatch.setattr(WorkerDocs, "list", lambda self, **kw: reads.append(1) or listing(self, **kw))
    web.register_handler("local", print)
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        for _ in range(3):
            web.enqueue("local", {})
            web.enqueue("report", {})
    assert _warnings(caplog, "local") == [] and _warnings(caplog, "report") == []
    assert len(reads) == 1  # a local type costs no read, a type confirmed once is not read again


def test_strict_types_refuses_an_unknown_type_and_writes_nothing(make_queue: Any) -> None:
    queue = make_queue(strict_types=True)
    queue.register_handler("local", print)
    _register_worker(queue, "remote")
    queue.enqueue("local", {})
    queue.enqueue("remote", {})
    with pytest.raises(InvalidJobError, match=r"'snd_email'.*strict_types"):
        queue.enqueue("snd_email", {})
    with pytest.raises(InvalidJobError, match="'nope'"):
        queue.enqueue_many([{"job_type": "local"}, {"job_type": "nope"}])
    assert sorted(d["type"] for d in raw_docs()) == ["local", "remote"]


def test_a_type_registered_by_a_worker_after_a_refusal_is_accepted_once_the_cache_is_stale(
    make_queue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(strict_types=True)
    now = [1_000.0]
    monkeypatch.setattr("mongo_job_queue.known_types.time.monotonic", lambda: now[0])
    with pytest.raises(InvalidJobError):
        queue.enqueue("new_type", {})
    _register_worker(queue, "new_type")  # a worker that handles it starts
    with pytest.raises(InvalidJobError):
        queue.enqueue("new_type", {})  # the registry read a moment ago is trusted
    now[0] += 5
    assert queue.enqueue("new_type", {}).type == "new_type"


def test_a_registry_that_cannot_be_read_never_fails_an_enqueue(
    queue: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreadable(self: Any, **kw: Any) -> Any:
        raise RuntimeError("registry down")

    monkeypatch.setattr(WorkerDocs, "list", unreadable)
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        assert queue.enqueue("unchecked", {}).type == "unchecked"
    assert _warnings(caplog, "unchecked") == []


def test_known_types_answers_for_the_cli(queue: Any) -> None:
    types = KnownTypes(queue.registry, queue.store)
    queue.register_handler("here", print)
    _register_worker(queue, "there")
    assert types.unknown(["here", "there", "nowhere", "nowhere"]) == ["nowhere"]
    assert types.mark_warned("nowhere_cli") is True and types.mark_warned("nowhere_cli") is False
    assert types.warned("nowhere_cli")
