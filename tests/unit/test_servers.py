"""The boot decision under gunicorn: a worker that imports the app from its fork, and a --preload master.

The stacks are built from functions compiled as if they were gunicorn's
arbiter (its module name and method names), so the test needs no gunicorn;
tests/e2e serves the example apps with the real one.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Optional

import pytest

from mongo_job_queue.contrib._boot import Start
from mongo_job_queue.contrib._servers import gunicorn_role, prefork_decision

_ARBITER_SOURCE = """
def spawn_worker(load):
    return init_process(load)

def init_process(load):
    return load()

def setup(load):
    return load()
"""


def arbiter() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "gunicorn.arbiter"}
    exec(compile(_ARBITER_SOURCE, "gunicorn/arbiter.py", "exec"), namespace)
    return namespace


def here() -> Optional[FrameType]:
    return sys._getframe(1)


def test_the_role_is_read_from_the_stack() -> None:
    gunicorn = arbiter()
    assert gunicorn_role(gunicorn["spawn_worker"](here)) == "worker"
    assert gunicorn_role(gunicorn["setup"](here)) == "master"
    assert gunicorn_role(here()) is None


@pytest.fixture
def under_gunicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")


def test_a_gunicorn_worker_that_imports_the_app_starts_at_boot(under_gunicorn) -> None:
    decision = arbiter()["spawn_worker"](prefork_decision)
    assert decision.when is Start.NOW
    assert decision.reason == "a gunicorn worker process, which imported the app after its fork"


def test_a_preloading_gunicorn_master_says_it_serves_nothing(under_gunicorn) -> None:
    decision = arbiter()["setup"](prefork_decision)
    assert decision.when is Start.LAZY  # inherited by the workers it forks
    assert decision.reason.startswith("this is gunicorn's master process") and "--preload" in decision.reason
    assert decision.then == "each worker process it forks starts its own at its first request"


def test_an_unknown_role_claims_nothing(under_gunicorn, monkeypatch: pytest.MonkeyPatch) -> None:
    decision = prefork_decision()
    assert decision is not None and decision.when is Start.LAZY
    assert decision.reason.startswith("under gunicorn, but not while it boots") and "if it serves any" in decision.then
    monkeypatch.delenv("SERVER_SOFTWARE")
    assert prefork_decision() is None
