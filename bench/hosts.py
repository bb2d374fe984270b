"""``python -m bench.hosts``: worker processes on many "hosts" (network namespaces) against one server.

Each host is a Linux network namespace joined by a veth pair to a bridge in
the root namespace, where one SecantusDB server listens on the bridge's
address; each runs ``--procs`` worker processes of the real command line
(``python -m mongo_job_queue worker``). The hosts grow step by step (1, 2,
4, 8 by default); at each step a batch of no-op jobs is drained and the
server's own counters (``serverStatus`` opcounters: every command it
received, from every host) give commands/s, beside jobs/s. At the end, with
every host idle and settled, the same counters give the idle cost per host,
against a baseline taken before any host started.

Needs root (``ip netns``, veth, bridge); everything it creates is named
after its pid (``mjqh<pid>...`` links and namespaces, ``mjq-hosts-<pid>-*``
storage) and removed at the end, on SIGTERM and SIGINT too and when a setup
step fails; the workers run in their own sessions and are killed by
process group, with whatever is left in a namespace before it is deleted.
Leftovers of a run killed with SIGKILL are removed at the next start. The
full pid keeps two runs' names apart (link names fit in 15 characters up
to a 7-digit pid and 1000 hosts). Default run: about two minutes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from pymongo import MongoClient

REPO = Path(__file__).resolve().parents[1]
_PREFIX = "mjqh"
COLLECTION = "bench_hosts_jobs"
_SERVE = "--serve"
#: The commands the measuring client itself sends per counter sample (serverStatus).
_OWN_PER_SAMPLE = 1


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def unavailable_reason() -> Optional[str]:
    """Why hosts cannot be made here, or None."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        return "no Linux network namespaces on this platform"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None and not os.access("/usr/sbin/ip", os.X_OK):
        return "'ip' (iproute2) is missing"
    return None


_STORAGE_PREFIX = "mjq-hosts-"


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list", check=False).stdout.splitlines() if line.split()]


def _links() -> list[str]:
    lines = _run("ip", "-o", "link", "show", check=False).stdout.splitlines()
    return [line.split(":")[1].strip().split("@")[0] for line in lines if line.count(":") >= 2]


def _owner(name: str) -> str:
    """The run's pid in one of its names (``mjqh<pid>-<i>``, ``mjqh<pid>br``, ``mjqh<pid>h<i>``/``n<i>``)."""
    rest = name[len(_PREFIX) :] if name.startswith(_PREFIX) else ""
    digits = ""
    for char in rest:
        if not char.isdigit():
            break
        digits += char
    return digits


def _delete_namespace(ns: str) -> None:
    """Kill what still runs in ``ns`` (a worker that escaped its process group), then delete it."""
    for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run("ip", "netns", "del", ns, check=False)


def _remove_run(tag: str) -> None:
    """Every namespace, link and storage directory named after run ``tag``."""
    for ns in _namespaces():
        if ns.startswith(_PREFIX) and _owner(ns) == tag:
            _delete_namespace(ns)
    for link in _links():  # the veths whose namespace never got its end, and the bridge
        if link.startswith(_PREFIX) and _owner(link) == tag:
            _run("ip", "link", "del", link, check=False)
    for path in Path(tempfile.gettempdir()).glob(f"{_STORAGE_PREFIX}{tag}-*"):
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans() -> None:
    """What runs killed before they cleaned up left behind (their pid is gone)."""
    tags = {_owner(name) for name in [*_namespaces(), *_links()] if name.startswith(_PREFIX)}
    tags |= {
        p.name[len(_STORAGE_PREFIX) :].split("-")[0] for p in Path(tempfile.gettempdir()).glob(f"{_STORAGE_PREFIX}*")
    }
    for tag in tags:
        if tag.isdigit() and not Path(f"/proc/{tag}").exists():
            _remove_run(tag)


class Hosts:
    """A bridge with an address for the server, and up to ``count`` namespaces on it, one address each."""

    def __init__(self, count: int) -> None:
        self.count = count
        if count > 1000:
            raise ValueError("at most 1000 hosts (their link names must fit in 15 characters)")
        self.tag = str(os.getpid())
        self.bridge = f"{_PREFIX}{self.tag}br"
        self.net = self._free_net()
        self.server_addr = str(self.net[1])
        self.names = [f"{_PREFIX}{self.tag}-{i}" for i in range(count)]

    @staticmethod
    def _free_net() -> ipaddress.IPv4Network:
        """A /24 of 198.18.128.0/17 (RFC 2544 benchmarking, never routed) that nothing here uses."""
        shown = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route", "show").stdout
        used = []
        for word in shown.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
        nets = list(ipaddress.ip_network("198.18.128.0/17").subnets(new_prefix=24))
        start = os.getpid() % len(nets)
        for i in range(len(nets)):
            net = nets[(start + i) % len(nets)]
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                return net
        raise RuntimeError("no free /24 in 198.18.128.0/17")

    def open(self) -> Hosts:
        """Make the bridge and the namespaces; on any failure remove what was made, and raise."""
        _remove_orphans()
        _remove_run(self.tag)  # a dead run whose pid this one reuses
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def _make(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.server_addr}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.names):
            outside, inside = f"{_PREFIX}{self.tag}h{i}", f"{_PREFIX}{self.tag}n{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", ns)
            _run("ip", "link", "set", outside, "master", self.bridge)
            _run("ip", "link", "set", outside, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.net[10 + i]}/24", "dev", inside)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def close(self) -> None:
        """Remove every namespace (with what still runs in it), veth and bridge of this run."""
        _remove_run(self.tag)


def _serve(addr: str, path: str) -> int:
    """The server process: SecantusDB on ``addr`` (the bridge), until stdin closes."""
    from secantus import SecantusDBServer

    server = SecantusDBServer(host=addr, port=0, storage_path=path, enable_test_commands=True)
    server.start()
    try:
        print(server.uri, flush=True)
        sys.stdin.read()
    finally:
        server.stop()
    return 0


def _opcounters(client: MongoClient[dict[str, Any]]) -> dict[str, int]:
    counters = client.admin.command("serverStatus")["opcounters"]
    return {k: int(v) for k, v in counters.items() if isinstance(v, (int, float))}


def _total(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[k] - before.get(k, 0) for k in after) - _OWN_PER_SAMPLE


def _per_min(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    """Each opcounter's rate (query, insert, update, getmore, command ...), per minute."""
    return {k: round((after[k] - before.get(k, 0)) / seconds * 60, 1) for k in sorted(after)}


def _live_workers(client: MongoClient[dict[str, Any]], db: str) -> int:
    return client[db][f"{COLLECTION}_workers"].count_documents({"stopped_at": {"$exists": False}})


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def _stop(procs: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM each process group (its own session), then SIGKILL the groups still there after 30 s."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)  # the group's other members too, if any outlived its leader
        proc.wait()


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    steps = sorted(set(args.hosts))
    hosts = Hosts(max(steps))
    workers: list[subprocess.Popen[Any]] = []
    server: Optional[subprocess.Popen[str]] = None
    db = f"mjq_hosts_{os.getpid()}"
    try:
        hosts.open()
        storage = tempfile.mkdtemp(prefix=f"{_STORAGE_PREFIX}{hosts.tag}-")
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.hosts", _SERVE, hosts.server_addr, storage],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        assert server.stdout is not None
        uri = server.stdout.readline().strip()
        if not uri.startswith("mongodb://"):
            raise RuntimeError(f"server did not start: {uri!r}")
        uri += ("&" if "?" in uri else "?") + "directConnection=true"
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        jobs = client[db][COLLECTION]
        env = {
            **os.environ,
            "MJQ_HOSTS_URI": uri,
            "MJQ_HOSTS_DB": db,
            "MJQ_HOSTS_POLL_MAX_MS": str(args.poll_max_ms),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        os.environ.update(env)  # this process enqueues through the app's own queue, as a web process would
        from .hosts_app import make_queue

        enqueuer = make_queue()
        enqueuer.ensure_indexes()
        before = _opcounters(client)
        time.sleep(args.baseline_seconds)
        after = _opcounters(client)
        baseline = _total(before, after) / args.baseline_seconds * 60
        baseline_kinds = _per_min(before, after, args.baseline_seconds)
        results: dict[str, Any] = {
            "meta": {
                "machine": {"cpu_count": os.cpu_count()},
                "procs_per_host": args.procs,
                "concurrency": args.concurrency,
                "jobs_per_step": args.jobs,
                "poll_interval_max_ms": args.poll_max_ms,
                "server": "embedded SecantusDB on a bridge; hosts are network namespaces on veth pairs",
            },
            "baseline_commands_per_min": round(baseline, 1),
            "baseline_by_kind_per_min": baseline_kinds,
            "steps": [],
        }
        started = 0
        for step in steps:
            for ns in hosts.names[started:step]:
                for _ in range(args.procs):
                    argv = [sys.executable, "-m", "mongo_job_queue", "worker", "--app", "bench.hosts_app:make_queue"]
                    argv += ["--concurrency", str(args.concurrency), "--log-level", "WARNING"]
                    workers.append(
                        subprocess.Popen(
                            ["ip", "netns", "exec", ns, *argv],
                            env=env,
                            cwd=REPO,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,  # killed by process group at the end, whatever it started
                        )
                    )
            started = step
            want = step * args.procs
            _wait(lambda want=want: _live_workers(client, db) >= want, 120, f"{want} workers")
            before = _opcounters(client)
            t0 = time.monotonic()
            enqueuer.enqueue_many([{"job_type": "noop", "data": {}}] * args.jobs)
            _wait(lambda: jobs.count_documents({"status": "completed"}) >= args.jobs, 300, "the drain")
            elapsed = time.monotonic() - t0
            after = _opcounters(client)
            jobs.delete_many({})
            commands = _total(before, after) - 1  # the last count is ours; the enqueue's insert is part of the load
            results["steps"].append(
                {
                    "hosts": step,
                    "workers": step * args.procs,
                    "jobs": args.jobs,
                    "seconds": round(elapsed, 3),
                    "jobs_per_s": round(args.jobs / elapsed, 1),
                    "server_commands_per_s": round(commands / elapsed, 1),
                    "server_commands_per_job": round(commands / args.jobs, 2),
                }
            )
            print(json.dumps(results["steps"][-1]), flush=True)
        time.sleep(args.settle_seconds)  # every host idle, its poll interval backed off to the ceiling
        before = _opcounters(client)
        time.sleep(args.idle_seconds)
        after = _opcounters(client)
        idle = _total(before, after) / args.idle_seconds * 60
        per_host = (idle - baseline) / max(steps)
        results["idle"] = {
            "hosts": max(steps),
            "workers": max(steps) * args.procs,
            "seconds": args.idle_seconds,
            "server_commands_per_min": round(idle, 1),
            "by_kind_per_min": _per_min(before, after, args.idle_seconds),
            "commands_per_min_per_idle_host": round(per_host, 2),
            "commands_per_min_per_idle_worker": round(per_host / args.procs, 2),
        }
        print(json.dumps(results["idle"]), flush=True)
        client.drop_database(db)
        client.close()
        return results
    finally:
        _stop(workers)
        if server is not None:
            if server.stdin:
                server.stdin.close()  # the server stops when its stdin closes
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            _stop([server])
        hosts.close()  # the namespaces, with anything still running in them, and the storage


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_SERVE]:
        return _serve(argv[1], argv[2])
    p = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=_ints, default=[1, 2, 4, 8], help="host counts to step through (default 1,2,4,8)")
    p.add_argument("--procs", type=int, default=1, help="worker processes per host (default 1)")
    p.add_argument("--concurrency", type=int, default=4, help="handler threads per worker (default 4)")
    p.add_argument("--jobs", type=int, default=100, help="no-op jobs drained at each step (default 100)")
    p.add_argument("--poll-max-ms", type=int, default=10_000, help="the workers' poll_interval_max_ms")
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="server counters with no host (default 10)")
    p.add_argument("--settle-seconds", type=float, default=30.0, help="idle time before the idle window (default 30)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="the idle window (default 30)")
    p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    args = p.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"python -m bench.hosts: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_signal)  # run()'s cleanup runs, as it does for Ctrl-C
    signal.signal(signal.SIGHUP, _exit_on_signal)
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
