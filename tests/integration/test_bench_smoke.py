"""The benchmark harness runs end to end at its smallest size, over the wire.

Not a timed test: it checks only that ``python -m bench --tiny`` exits 0
against the session's server and writes a JSON file with every figure, each
with positive values. The figures themselves are for ``python -m bench``.
"""

from __future__ import annotations

import json
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


def test_tiny_bench_runs_over_the_wire_and_writes_every_figure(mongodb_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--uri", mongodb_uri, "--json", str(out)],
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

    (latency,) = _ok(figures, "pickup_latency", IDLE)
    assert latency["p50"] > 0 and latency["p99"] >= latency["p50"]
    (idle,) = _ok(figures, "idle_commands_per_min", IDLE)
    assert idle["stats"]["median"] > 0
    rss = _ok(figures, "worker_rss", LIBRARY)
    assert len(rss) == 2 and all(e["stats"]["median"] > 0 for e in rss)
