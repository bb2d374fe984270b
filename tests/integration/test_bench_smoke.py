"""The benchmark harness runs end to end at its smallest size, over the wire.

Not a timed test: it checks only that ``python -m bench --tiny`` exits 0
against the session's server and writes a JSON file with every figure, each
with positive values (or an explicit "n/a: why"). The figures themselves are
for ``python -m bench``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LIBRARY, LIMIT, IDLE = "mjq[default]", "limit[pymongo]", "mjq[fast-poll]"


def _ok(figures: list[dict], figure: str, contender: str) -> list[dict]:
    found = [f for f in figures if f["figure"] == figure and f["contender"] == contender and f["status"] == "ok"]
    assert found, f"no {figure} figure for {contender}"
    return found


def _embedded_server_pid() -> int | None:
    """The session's embedded server: a child of this process running ``mongo_job_queue.dev.embedded``."""
    if os.environ.get("MONGODB_URI") or not os.path.isdir("/proc"):
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"mongo_job_queue.dev.embedded" in cmdline:
            return int(entry)
    return None


def test_tiny_bench_runs_over_the_wire_and_writes_every_figure(mongodb_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    server_pid = _embedded_server_pid()
    assert server_pid or os.environ.get("MONGODB_URI"), "the session's embedded server process not found"
    pid_args = ["--server-pid", str(server_pid)] if server_pid else []
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--uri", mongodb_uri, "--json", str(out), *pid_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())

    assert {"meta", "contenders", "figures"} <= data.keys()
    meta = data["meta"]
    assert meta["plan"] == "tiny"
    assert meta["machine"]["cpu_count"] >= 1
    assert meta["backend"]["server_version"]
    assert {"mongo-job-queue", "pymongo"} <= meta["versions"].keys()
    assert {name: c["status"] for name, c in data["contenders"].items()} == {LIBRARY: "ok", IDLE: "ok", LIMIT: "ok"}

    figures = data["figures"]
    for contender in (LIBRARY, LIMIT):
        for figure in ("throughput", "round_trips_per_job", "cpu_per_job", "enqueue_rate"):
            for entry in _ok(figures, figure, contender):
                assert entry["stats"]["median"] > 0, entry
                assert entry["stats"]["n"] == len(entry["samples"]) >= 1
    assert {e["params"]["concurrency"] for e in _ok(figures, "throughput", LIBRARY)} == {1, 8}
    assert {e["params"]["mode"] for e in _ok(figures, "enqueue_rate", LIBRARY)} == {"one", "bulk"}
    assert _ok(figures, "round_trips_per_job", LIMIT)[0]["by_command"]["findAndModify"] >= 1
    assert _ok(figures, "throughput_vs_limit", LIBRARY)[0]["stats"]["median"] > 0
    for contender in (LIBRARY, LIMIT):
        for figure in ("bytes_sent_per_job", "bytes_received_per_job"):
            for entry in _ok(figures, figure, contender):
                assert entry["stats"]["min"] > 0 and entry["unit"] == "bytes/job", entry
        server = [e for e in figures if e["figure"] == "server_cpu_per_job" and e["contender"] == contender]
        assert {e["params"]["concurrency"] for e in server} == {1, 8}
        for entry in server:
            if server_pid:
                assert entry["status"] == "ok" and entry["stats"]["min"] > 0, entry
            else:
                assert entry["status"].startswith("n/a: "), entry
    # A claim carries the job document back, a completion little: the limit receives more than it sends.
    (limit_in,) = [e for e in _ok(figures, "bytes_received_per_job", LIMIT) if e["params"]["concurrency"] == 1]
    (limit_out,) = [e for e in _ok(figures, "bytes_sent_per_job", LIMIT) if e["params"]["concurrency"] == 1]
    assert limit_in["stats"]["median"] > 200 and limit_out["stats"]["median"] > 200

    (latency,) = _ok(figures, "pickup_latency", IDLE)
    assert latency["p50"] > 0 and latency["p99"] >= latency["p50"]
    (idle,) = _ok(figures, "idle_commands_per_min", IDLE)
    # An idle worker on a change stream sends a few commands a minute: a 3 s window may hold none.
    assert idle["stats"]["n"] == 2 and idle["stats"]["min"] >= 0 and idle["window_s"] > 0, idle
    rss = _ok(figures, "worker_rss", LIBRARY)
    assert len(rss) == 2 and all(e["stats"]["median"] > 0 for e in rss)


def test_the_concurrency_1_bench_runs_over_the_wire(mongodb_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "lean.json"
    args = ["--uri", mongodb_uri, "--jobs", "10", "--rounds", "2", "--threads", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.lean", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "worker CPU per job / the bare loop's" in proc.stdout
    assert "thread mjq poller" in proc.stdout
    rounds = json.loads(out.read_text())["rounds"]
    assert len(rounds) == 2
    for row in rounds:
        assert row[LIBRARY]["jobs_s"] > 0 and row[LIBRARY]["cpu_us"] > 0
        assert row[LIMIT]["jobs_s"] > 0 and row[LIMIT]["cpu_us"] > 0
