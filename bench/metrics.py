"""What is counted, and how: database commands, CPU time, resident memory, spread.

* **Round trips** are counted with a :class:`pymongo.monitoring.CommandListener`
  registered on the very client a contender uses (for mongo-job-queue, the
  client of its MongoEngine alias). One command is one round trip, whatever
  it carries: an ``update`` with many statements (a bulk write) counts once.
  ``hello``/``isMaster`` sent as commands (clock sync, write-concern check)
  are kept apart from the job path; the driver's own server monitoring does
  not emit command events at all, so it is never counted.
  Per-job figures are taken in steady state: between the 10th and the 90th
  percent of a batch's jobs, which leaves out start-up (opening a change
  stream, a write-concern check) and the empty polls at the end.
* **CPU** is process CPU time (user + system). The embedded server runs in its
  own process, so a contender's CPU is its own overhead, not the database's.
* **Server CPU** is the CPU time of the embedded server's process over the same
  drain (``/proc/<pid>/stat``), beside the worker's: work moved from the client
  to the server shows there. With ``--uri`` the server is elsewhere: "n/a"
  (unless ``--server-pid`` names its process on this machine).
* **Bytes per job** are the BSON sizes of every command document and every reply
  as command monitoring shows them (``bson.encode`` of
  ``CommandStartedEvent.command`` and ``CommandSucceededEvent.reply``), over the
  whole drain. The events are kept and encoded after the drain's CPU was read,
  so measuring does not add to the worker CPU. The wire adds an OP_MSG header
  (about 21 bytes) per message, not counted. Only for a contender whose client
  is pymongo in the bench's own process.
* **Memory** is the resident set size (RSS) read from ``/proc``.
* **Spread**: every figure keeps its samples and reports median, min, max and
  standard deviation; latencies also report p50 and p99.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from typing import Any

import bson
from pymongo import monitoring

__all__ = [
    "HELLO_COMMANDS",
    "CommandCounter",
    "CompletionCounter",
    "SteadyWindow",
    "per_job",
    "percentile",
    "process_cpu_seconds",
    "rss_mb",
    "summarize",
]

#: Handshake and monitoring-style commands: reported apart from the job path.
HELLO_COMMANDS = frozenset({"hello", "ismaster", "isMaster"})

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends, by command name, thread-safely; keeps them for :meth:`wire_bytes`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sent: list[Any] = []
        self._received: list[Any] = []
        #: ``time.monotonic()`` when the last command was sent: how long the client has been quiet.
        self.last_at = 0.0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self._counts[event.command_name] += 1
            self._sent.append(event.command)
            self.last_at = time.monotonic()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            self._received.append(event.reply)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._sent.clear()
            self._received.clear()

    def wire_bytes(self) -> tuple[int, int]:
        """``(sent, received)``: BSON bytes of the commands and replies since the last reset (encoded now)."""
        with self._lock:
            sent, received = list(self._sent), list(self._received)
        return sum(len(bson.encode(d)) for d in sent), sum(len(bson.encode(d)) for d in received)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class CompletionCounter(monitoring.CommandListener):
    """Counts the jobs a client's acknowledged ``update`` commands set ``completed``, to wait on in process.

    A drain ends when its last completion write is acknowledged. Reading
    that from the replies of the contender's own client costs the server
    nothing; polling the collection (a ``count_documents`` every few
    milliseconds) would cost a linear-scanning server CPU and slow the very
    drain it times. Only updates of ``collection`` whose every statement
    sets ``status: completed`` count, by the reply's ``nModified``.
    """

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self._cond = threading.Condition()
        self._open: dict[int, bool] = {}
        self.completed = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name != "update" or event.command.get("update") != self.collection:
            return
        statements = event.command.get("updates") or ()
        if statements and all(((u.get("u") or {}).get("$set") or {}).get("status") == "completed" for u in statements):
            with self._cond:
                self._open[event.request_id] = True

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name != "update":
            return
        with self._cond:
            if self._open.pop(event.request_id, False):
                self.completed += int(event.reply.get("nModified", 0))
                self._cond.notify_all()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._cond:
            self._open.pop(event.request_id, None)

    def reset(self) -> None:
        with self._cond:
            self.completed = 0

    def wait(self, jobs: int, timeout: float) -> bool:
        """Whether ``jobs`` completions were acknowledged within ``timeout`` seconds of this call."""
        with self._cond:
            return self._cond.wait_for(lambda: self.completed >= jobs, timeout)


class SteadyWindow:
    """Snapshots of a :class:`CommandCounter` when the 10% and the 90% job of a batch start."""

    def __init__(self, counter: CommandCounter, jobs: int, lo: float = 0.1, hi: float = 0.9) -> None:
        self.counter = counter
        self.lo = max(1, int(jobs * lo))
        self.hi = max(self.lo + 1, int(jobs * hi))
        self.marks: dict[int, dict[str, int]] = {}

    def at(self, done: int) -> None:
        """Call with the running count of started jobs (under the caller's lock)."""
        if done in (self.lo, self.hi):
            self.marks[done] = self.counter.snapshot()

    def result(self) -> tuple[dict[str, int], int] | None:
        """``(commands, jobs)`` between the two marks, or None if the batch was too short."""
        if self.lo not in self.marks or self.hi not in self.marks:
            return None
        before, after = self.marks[self.lo], self.marks[self.hi]
        return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}, self.hi - self.lo


def per_job(commands: dict[str, int], jobs: int) -> tuple[float, dict[str, float], float]:
    """``(round trips per job, per-command breakdown, hello per job)`` from a command count."""
    path = {name: n for name, n in commands.items() if name not in HELLO_COMMANDS}
    hello = sum(n for name, n in commands.items() if name in HELLO_COMMANDS)
    return sum(path.values()) / jobs, {k: v / jobs for k, v in sorted(path.items())}, hello / jobs


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux ``/proc``, else psutil)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except FileNotFoundError:
        if os.path.exists("/proc/self/stat"):
            raise  # Linux, and the process is gone
    import psutil  # only where /proc does not exist

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size in MiB of ``pid`` (default: this process)."""
    path = f"/proc/{pid or 'self'}/status"
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    import psutil

    return float(psutil.Process(pid or os.getpid()).memory_info().rss) / 2**20


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    data = sorted(samples)
    if not data:
        raise ValueError("no samples")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(samples: list[float], *, digits: int = 4) -> dict[str, Any]:
    """Median, min, max, mean and sample standard deviation of repeated measurements."""
    if not samples:
        raise ValueError("no samples")
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), digits),
        "min": round(min(samples), digits),
        "max": round(max(samples), digits),
        "mean": round(statistics.fmean(samples), digits),
        "stdev": round(statistics.stdev(samples), digits) if len(samples) > 1 else 0.0,
    }
