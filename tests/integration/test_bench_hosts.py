"""The many-hosts harness runs end to end at its smallest: two namespaces, a few jobs, seconds of idle.

Not a timed test: it checks that ``python -m bench.hosts`` drains the jobs
at each step, reports the server's counters and leaves no namespace or
bridge behind. The figures themselves are for docs/scaling.rst.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
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


def _named_after(tag: str) -> set[str]:
    return {name for name in _ours() if name.startswith(f"mjqh{tag}") and not name[4 + len(tag)].isdigit()}


def _processes_with(env_entry: bytes) -> list[int]:
    """Live processes whose environment holds ``env_entry`` (the run's own MJQ_HOSTS_DB)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and env_entry in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_a_failed_setup_step_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.hosts as hosts_module

    real = hosts_module._run
    adds: list[str] = []

    def flaky(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if argv[:3] == ("ip", "netns", "add"):
            adds.append(argv[3])
            if len(adds) == 2:
                raise RuntimeError("injected: ip netns add failed")
        return real(*argv, check=check)

    monkeypatch.setattr(hosts_module, "_run", flaky)
    hosts = hosts_module.Hosts(2)
    with pytest.raises(RuntimeError, match="injected"):
        hosts.open()
    assert len(adds) == 2 and not _named_after(hosts.tag)  # the bridge, the first host and its veth are gone


def test_names_of_runs_apart_by_100000_pids_do_not_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.hosts as hosts_module

    names = []
    for pid in (123_456, 223_456, 4_194_303):
        monkeypatch.setattr(hosts_module.os, "getpid", lambda pid=pid: pid)
        monkeypatch.setattr(
            hosts_module.Hosts, "_free_net", staticmethod(lambda: hosts_module.ipaddress.ip_network("198.18.200.0/24"))
        )
        hosts = hosts_module.Hosts(1000)
        names.append({hosts.bridge, *hosts.names})
        assert len(hosts.bridge) <= 15 and len(f"mjqh{hosts.tag}h999") <= 15  # Linux's limit on link names
    assert not names[0] & names[1]


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_sigterm_stops_the_workers_and_removes_every_host() -> None:
    argv = ["--hosts", "1", "--jobs", "5", "--concurrency", "1", "--baseline-seconds", "0.5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.hosts", *argv, "--settle-seconds", "120", "--idle-seconds", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal goes to the harness alone, as from a process manager
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert '"hosts": 1' in first, first + proc.stderr.read() if proc.stderr else first
        marker = f"MJQ_HOSTS_DB=mjq_hosts_{proc.pid}".encode()
        assert _processes_with(marker), "no worker of the run found"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert not [pid for pid in _processes_with(marker) if pid != proc.pid], "workers outlived the run"
    assert not _named_after(str(proc.pid))
    assert not list(Path(tempfile.gettempdir()).glob(f"mjq-hosts-{proc.pid}-*"))
