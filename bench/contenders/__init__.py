"""The contenders: everything that runs the same no-op jobs on the same server.

A contender is driven in the same steps, whatever it is:

1. :meth:`Contender.prepare` once (connect, install, check availability);
   :class:`Unavailable` means "skipped" (say why), any other error "failed".
2. :meth:`Contender.start` per concurrency level (start its workers, idle or
   paused, so that they cost nothing while another contender is measured).
3. Per repetition: :meth:`Contender.fill` the queue (not timed), then
   :meth:`Contender.drain` it (timed), then :meth:`Contender.clear`.
4. :meth:`Contender.enqueue` for the enqueue-rate figure.
5. :meth:`Contender.stop_level` and finally :meth:`Contender.close`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Optional

from pymongo import MongoClient, uri_parser

from ..metrics import process_cpu_seconds

__all__ = [
    "Batch",
    "Contender",
    "Context",
    "LineProcess",
    "Unavailable",
    "die_with_parent",
    "wait_until",
    "with_database",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


class Unavailable(Exception):
    """The contender cannot run here (a missing tool, an unreachable server): skipped, with this reason."""


@dataclass
class Batch:
    """One timed drain of a pre-filled queue."""

    jobs: int
    seconds: float
    cpu_seconds: Optional[float] = None  # the worker process(es), not the server
    commands: Optional[dict[str, int]] = None  # database commands by name, None if not countable
    steady: Optional[tuple[dict[str, int], int]] = None  # (commands, jobs) in the batch's steady state
    wire_bytes: Optional[tuple[int, int]] = None  # (sent, received) BSON bytes of the whole drain, None if not seen
    server_cpu_seconds: Optional[float] = None  # the server process over the drain, set by the runner
    #: The server's CPU seconds read by the contender when its drain ended (``Context.server_cpu``), before
    #: it stops or pauses its workers; None: the runner reads it after ``drain`` returns.
    server_cpu_end: Optional[float] = None
    #: The same, read when its clock started (after a worker's start the clock leaves out); None: the
    #: runner reads it before ``drain`` is called.
    server_cpu_start: Optional[float] = None


@dataclass
class Context:
    """What every contender shares: the server, a bench database and an unmonitored control client."""

    uri: str
    db_name: str
    control: MongoClient[dict[str, Any]]
    redis_url: str = "redis://127.0.0.1:6379/0"
    timeout_s: float = 300.0
    server_pid: Optional[int] = None  # the server's process on this machine, for its CPU; None: n/a
    notes: list[str] = field(default_factory=list)

    @property
    def db(self) -> Any:
        return self.control[self.db_name]

    def server_cpu(self) -> Optional[float]:
        """The server process's CPU seconds so far; None when it is not on this machine.

        A contender reads it when it reads its own clock at the end of a
        drain, so that stopping or pausing its workers afterwards (a
        worker's ``stop()`` writes too) is charged to no one.
        """
        return process_cpu_seconds(self.server_pid) if self.server_pid else None


class Contender:
    """Base class; see the module docstring for the order of calls."""

    name = "?"
    kind = "peer"  # "library", "limit" or "peer"
    description = ""
    #: The figures this contender takes part in ("throughput", "enqueue", "idle").
    figures: frozenset[str] = frozenset({"throughput", "enqueue"})
    #: Why bytes on the wire are not measured for this contender ("" if they are).
    wire_bytes_na = "n/a: its client is not pymongo in the bench process"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.notes: list[str] = []
        self.versions: dict[str, str] = {}

    def prepare(self) -> None:
        """One-time setup; raise :class:`Unavailable` to be skipped."""

    def start(self, concurrency: int) -> None:
        raise NotImplementedError

    def fill(self, jobs: int) -> None:
        raise NotImplementedError

    def drain(self, jobs: int) -> Batch:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def enqueue(self, jobs: int, *, bulk: bool) -> Optional[float]:
        """Seconds to enqueue ``jobs`` jobs one by one (or in bulk); None if there is no such API."""
        return None

    def stop_level(self) -> None:
        """Stop the workers of the current concurrency level."""

    def close(self) -> None:
        """Release everything; must be safe to call after a failure."""


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def with_database(uri: str, db_name: str) -> str:
    """``uri`` with its path set to ``/db_name``, options kept (kombu reads the database from the path)."""
    parsed = uri_parser.parse_uri(uri)
    if parsed.get("database"):
        return uri.replace(f"/{parsed['database']}", f"/{db_name}", 1)
    head, sep, query = uri.partition("?")
    return f"{head.rstrip('/')}/{db_name}{sep}{query}"


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the bench dies, even while paused (Linux only).

    A worker paused with SIGSTOP would otherwise outlive a bench killed by a
    timeout, stopped, forever.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LineProcess:
    """A worker subprocess whose stdout lines are read by a thread; can be paused (SIGSTOP) and resumed.

    A paused worker neither polls the server nor burns CPU while another
    contender is measured, and keeps its warm state for its next turn.
    """

    def __init__(self, argv: list[str], *, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(cwd or REPO_ROOT),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.lines: Queue[str] = Queue()
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail = [*self.stderr_tail[-30:], line.rstrip("\n")]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The next stdout line for which ``predicate`` is true; other lines are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None and self.lines.empty():
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}: {self.error_summary()}")
            if left <= 0:
                raise TimeoutError(f"no expected output within {timeout:.0f} s: {self.error_summary()}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except Empty:
                continue
            if predicate(line):
                return line

    def error_summary(self) -> str:
        return " | ".join(self.stderr_tail[-3:]) or "no error output"

    def pause(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def terminate(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
