"""The many-hosts harness runs end to end at its smallest: two namespaces, a few jobs, seconds of idle.

Not a timed test: it checks that ``python -m bench.hosts`` drains the jobs
at each step, reports the server's counters and leaves no namespace or
bridge behind. The figures themselves are for docs/scaling.rst.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench.hosts import unavailable_reason  # noqa: E402

REASON = unavailable_reason()


def _ours() -> set[str]:
    """The namespaces and links named like the harness's."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()
    found = {name for name in names if name.startswith("mjqh")}
    found |= {line.split(":")[1].strip().split("@")[0] for line in links if "mjqh" in line}
    return found


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_two_hosts_drain_jobs_and_report_server_counters(tmp_path: Path) -> None:
    out = tmp_path / "hosts.json"
    before = _ours()  # another run's, if one is going on
    argv = ["--hosts", "1,2", "--jobs", "20", "--baseline-seconds", "1", "--settle-seconds", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hosts", *argv, "--idle-seconds", "2", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [step["hosts"] for step in data["steps"]] == [1, 2]
    for step in data["steps"]:
        assert step["jobs"] == 20 and step["jobs_per_s"] > 0 and step["server_commands_per_s"] > 0
    assert data["idle"]["hosts"] == 2 and data["idle"]["server_commands_per_min"] >= 0
    assert _ours() <= before  # every namespace, veth and bridge of this run removed
