"""Start the example apps as real servers on loopback, talk HTTP to them, and always clean up.

Each server runs in its own session (process group), so stopping it also
stops what it spawned: the debug reloader's serving child, gunicorn's
workers. Output goes to a file, read by the tests for the boot log lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
from bson import ObjectId
from helpers import wait_until
from integration.tcp_gate import TcpGate
from pymongo.uri_parser import parse_uri

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process (and its children) on ``127.0.0.1:port``."""

    def __init__(self, argv: Sequence[str], *, port: int, cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def request(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text.decode(errors="replace")

    def get_within(self, path: str, seconds: float) -> int:
        """The status of ``GET path``, which must answer within ``seconds``."""
        started = time.monotonic()
        status, _ = self.request("GET", path)
        took = time.monotonic() - started
        assert took < seconds, f"GET {path} took {took:.1f}s"
        return status

    def wait_ready(self, timeout: float = 90.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.request("GET", "/health")[0] == 200
            except OSError:
                return False

        wait_until(up, timeout=timeout, interval=0.1, what=f"the server on port {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # Children left behind by a crashed parent share the process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


@pytest.fixture
def serve(mongodb_uri: str, db_name: str, raw_db: Any, tmp_path: Path) -> Iterator[Any]:
    """``serve(argv_with_{port}, cwd=..., env=...)`` starts a server on the test database and waits for it."""
    raw_db.example_jobs.drop()
    raw_db.example_jobs_control.drop()  # schedule state of an earlier test's server
    servers: list[Server] = []

    def start(argv: Sequence[str], *, cwd: Path = REPO, env: Optional[dict[str, str]] = None) -> Server:
        port = free_port()
        full_env = {
            **os.environ,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DB": db_name,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        for name in ("WERKZEUG_RUN_MAIN", "RUN_MAIN", "SERVER_SOFTWARE", "FLASK_DEBUG"):
            if name not in (env or {}):
                full_env.pop(name, None)
        server = Server(
            [a.format(port=port) for a in argv],
            port=port,
            cwd=cwd,
            env=full_env,
            log_path=tmp_path / f"server{len(servers)}.log",
        )
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gated_uri(mongodb_uri: str, db_name: str) -> Iterator[Any]:
    """The test database through a :class:`TcpGate`, closed at first: ``.uri`` and ``.gate.open()``."""
    host, port = parse_uri(mongodb_uri)["nodelist"][0]
    gate = TcpGate((host, port))
    options = "directConnection=true&serverSelectionTimeoutMS=300&connectTimeoutMS=300&heartbeatFrequencyMS=500"
    yield type("Gated", (), {"uri": f"mongodb://127.0.0.1:{gate.port}/{db_name}?{options}", "gate": gate})
    gate.stop()


def enqueue_examples(server: Server, organization: str = "acme") -> dict[str, str]:
    """Enqueue one job of each example type over HTTP; return their ids by type."""
    ids = {}
    for job_type, data in (
        ("send_welcome_email", {"email": "ada@example.com"}),
        ("resize_image", {"image": "cat.png"}),
        ("generate_report", {"month": "2026-01"}),
    ):
        status, body = server.request("POST", f"/organizations/{organization}/jobs", {"type": job_type, "data": data})
        assert status == 202, body
        ids[job_type] = body["id"]
    return ids


def stop_gracefully_on_sigterm(server: Server, raw_db: Any) -> None:
    """SIGTERM to the server while a job runs: the process exits 0 once the job finished, as on Ctrl-C."""
    body = {"type": "export_data", "data": {"steps": 20, "step_ms": 100}}  # about 2 s
    status, created = server.request("POST", "/organizations/acme/jobs", body)
    assert status == 202, created
    job_id = ObjectId(created["id"])
    wait_until(lambda: raw_db.example_jobs.find_one({"_id": job_id})["status"] == "processing", timeout=30)
    server.proc.send_signal(signal.SIGTERM)  # to the process, as a supervisor or ``docker stop`` sends it
    try:
        code = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after SIGTERM:\n{server.log()}") from None
    assert code == 0, server.log()
    job = raw_db.example_jobs.find_one({"_id": job_id})
    assert job["status"] == "completed" and job["result"] == {"exported": 20}, job  # not left to its lease
    assert "stopped: all jobs finished" in server.log()


def wait_finished(server: Server, ids: dict[str, str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Poll the status endpoint until every job completed; return their last status documents."""
    seen: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        for job_type, job_id in ids.items():
            status, body = server.request("GET", f"/jobs/{job_id}")
            assert status == 200, body
            seen[job_type] = body
        return all(body["status"] == "completed" for body in seen.values())

    try:
        wait_until(done, timeout=timeout, interval=0.1, what="the example jobs to complete")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\njobs: {seen}\nserver log:\n{server.log()}") from None
    return seen
