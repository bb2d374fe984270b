"""Helpers shared by the test packages."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from bson import ObjectId

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def holds_for(predicate: Callable[[], object], duration: float, interval: float = 0.05, what: str = "") -> None:
    """Assert that ``predicate`` stays truthy for ``duration`` seconds (an invariant, not a wait)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"invariant broken: {what or predicate}"
        time.sleep(interval)
    assert predicate(), f"invariant broken: {what or predicate}"


#: A field value for :func:`stored_job` that leaves the field out.
MISSING: Any = object()


def stored_job(now: datetime, **fields: Any) -> dict[str, Any]:
    """A due pending job document as the queue stores it, for tests that write one by hand (as mongosh would)."""
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "type": "WORK",
        "status": "pending",
        "data": {},
        "queue": "default",
        "priority": 0,
        "run_at": now - timedelta(seconds=1),
        "attempts": 0,
        "max_retries": 2,
        "created_at": now,
        "updated_at": now,
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not MISSING}


def mypy_strict(*files: Path) -> subprocess.CompletedProcess[str]:
    """Type-check ``files`` as a user's code is, under the project's mypy config (strict); the finished process."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "mypy", "--config-file", str(root / "pyproject.toml"), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, cwd=root, check=False)


def _in_child(results: Any, body: Callable[[], object]) -> None:
    outcome: list[str] = []  # the body in a thread: a deadlock is reported, not hung on

    def run() -> None:
        try:
            body()
            outcome.append("ok")
        except BaseException as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    results.put(outcome[0] if outcome else "hung: deadlocked in the child")


def run_forked(body: Callable[[], object], timeout: float = 60) -> str:
    """Run ``body`` in a forked child: "ok", the exception it raised, or that it deadlocked."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(results, body))
    proc.start()
    try:
        return str(results.get(timeout=timeout))
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
