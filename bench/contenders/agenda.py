"""Agenda 5 (Node 20), the best-known MongoDB job scheduler, on the same server.

Agenda is installed from the npm registry into ``bench/agenda/node_modules``
on first use (``npm ci``, pinned by ``bench/agenda/package-lock.json``); it
is skipped, with the reason, when ``node`` or ``npm`` is missing. A
long-lived Node process (``bench/agenda/runner.js``) per concurrency level
inserts the jobs one by one with Agenda stopped, then times ``start()`` until
the last job completed and stops again, so it costs nothing while another
contender is measured. Commands are counted by the Node driver's command
monitoring; CPU is read from ``/proc`` for the Node process.

Agenda runs with its defaults (lock lifetime 10 min, ``processEvery`` 5 s,
no lock limit, so a worker locks every due job it can see), with the job's
``concurrency`` set to the level and ``maxConcurrency`` raised to match.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from ..metrics import process_cpu_seconds
from . import REPO_ROOT, Batch, Contender, Context, LineProcess, Unavailable

AGENDA_DIR = REPO_ROOT / "bench" / "agenda"
COLLECTION = "agendaJobs"


def ensure_installed(directory: Path = AGENDA_DIR) -> None:
    """Install the pinned Agenda into ``directory/node_modules`` unless it is there."""
    if (directory / "node_modules" / "agenda" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm not found on PATH (needed once to install agenda@5)")
    verb = "ci" if (directory / "package-lock.json").exists() else "install"
    proc = subprocess.run(
        [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"npm {verb} failed: {tail}")


class Agenda(Contender):
    name = "agenda@5[node]"
    wire_bytes_na = "n/a: the Node.js driver, in another process"
    description = "Agenda 5 on Node, same server; defaults except per-job concurrency"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.node = shutil.which("node")
        self.proc: Optional[LineProcess] = None

    def prepare(self) -> None:
        if self.node is None:
            raise Unavailable("node not found on PATH")
        ensure_installed()
        self.notes.append("Agenda defaults: processEvery 5 s, lockLimit 0 (locks every due job), lock lifetime 10 min")

    def _call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        self.proc.send(json.dumps(msg))
        reply = json.loads(self.proc.expect(lambda line: line.startswith('{"ok"'), timeout))
        if not reply.get("ok"):
            raise RuntimeError(f"agenda runner: {reply.get('error')}")
        return reply

    def start(self, concurrency: int) -> None:
        assert self.node is not None
        self.stop_level()
        env = {
            "BENCH_URI": self.ctx.uri,
            "BENCH_DB": self.ctx.db_name,
            "BENCH_COLLECTION": COLLECTION,
            "BENCH_CONCURRENCY": str(concurrency),
        }
        self.proc = LineProcess([self.node, "runner.js"], env=env, cwd=AGENDA_DIR)
        first = json.loads(self.proc.expect(lambda line: line.startswith("{"), timeout=60))
        if not first.get("ready"):
            raise RuntimeError(f"agenda runner: {first.get('error')}")
        self.versions.update(first["versions"])

    def fill(self, jobs: int) -> None:
        self._call({"cmd": "enqueue", "n": jobs}, self.ctx.timeout_s)

    def drain(self, jobs: int) -> Batch:
        assert self.proc is not None
        cpu0 = process_cpu_seconds(self.proc.pid)
        reply = self._call({"cmd": "run", "n": jobs}, self.ctx.timeout_s)
        cpu = process_cpu_seconds(self.proc.pid) - cpu0
        return Batch(jobs, float(reply["seconds"]), cpu, reply["commands"])

    def clear(self) -> None:
        self.ctx.db[COLLECTION].delete_many({})

    def enqueue(self, jobs: int, *, bulk: bool) -> Optional[float]:
        if bulk:
            return None
        if self.proc is None:
            self.start(1)
        return float(self._call({"cmd": "enqueue", "n": jobs}, self.ctx.timeout_s)["seconds"])

    def stop_level(self) -> None:
        if self.proc is not None:
            try:
                self.proc.send(json.dumps({"cmd": "quit"}))
                self.proc.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc.terminate()
            self.proc = None

    def close(self) -> None:
        self.stop_level()
