"""``python -m bench.lean``: the concurrency-1 hot path against the bare loop, ratios per round.

Issue 16's goal for concurrency 1 is worker CPU per job within 1.3x of the
bare pymongo loop and throughput at least 0.8x its own. This runs only that
figure, with more rounds than ``--quick`` and without the peers, so a change
to the hot path can be measured before and after on the same machine state:
each round drains the same queue once with each contender (the order
alternates), and prints the round's ratios. ``--only mjq`` drains
mongo-job-queue alone, e.g. under ``py-spy record``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from pymongo import MongoClient

from .contenders import Batch, Contender, Context
from .contenders.mjq import MjqContender, disconnect
from .contenders.pymongo_loop import PymongoLoop
from .runner import _drain_once, database


def _row(b: Batch) -> dict[str, float]:
    row = {"jobs_s": b.jobs / b.seconds, "cpu_us": (b.cpu_seconds or 0.0) / b.jobs * 1e6}
    if b.server_cpu_seconds is not None:
        row["server_us"] = b.server_cpu_seconds / b.jobs * 1e6
    return row


_ENDED: dict[str, float] = {}


def _role(name: str) -> str:
    """A thread's role: ``mjq-<worker id>-poller`` -> ``poller``, pymongo's and others' names without numbers."""
    if name.startswith("mjq-"):
        return "mjq " + name.rsplit("-", 1)[1].split("~")[0]
    return "".join(ch for ch in name if not ch.isdigit() and ch not in "()")


def count_thread_cpu() -> None:
    """From now on, every thread adds its CPU time to :data:`_ENDED` by role when it ends."""
    run = threading.Thread.run

    def counted(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            role = _role(self.name)
            _ENDED[role] = _ENDED.get(role, 0.0) + time.thread_time()

    threading.Thread.run = counted  # type: ignore[method-assign]


def profile_threads(path: str) -> Callable[[], None]:
    """Profile every thread started from now on (cProfile, one profile each); the returned call writes them merged."""
    import cProfile
    import pstats

    profiles: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        prof = cProfile.Profile(time.thread_time)  # CPU time, not wall time
        profiles.append(prof)
        prof.enable()
        try:
            run(self)
        finally:
            prof.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]

    def write() -> None:
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(path)

    return write


def thread_cpu() -> dict[str, float]:
    """CPU seconds by thread role: the ended threads', plus the live ones' so far (``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = dict(_ENDED)
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = _role(t.name)
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lean", description=__doc__.split("\n\n")[0])
    p.add_argument("--uri", default=os.environ.get("MONGODB_URI"), help="a real server instead of the embedded one")
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", choices=("mjq", "limit"), help="drain this contender alone")
    p.add_argument("--concurrency", type=int, default=1, help="handler threads of each contender (default 1)")
    p.add_argument("--config", default="{}", help="mongo-job-queue config keys, as JSON")
    p.add_argument("--json", metavar="PATH", help="write every round's figures here")
    p.add_argument("--profile", metavar="PATH", help="cProfile every thread but the main one; merged stats here")
    p.add_argument("--threads", action="store_true", help="print CPU per job by thread (the whole run)")
    args = p.parse_args(argv)
    if args.threads:
        count_thread_cpu()
    write_profile = profile_threads(args.profile) if args.profile else None
    rounds: list[dict[str, Any]] = []
    with database(args.uri) as (uri, _, server_pid):
        print(json.dumps({"server_pid": server_pid}), file=sys.stderr, flush=True)  # e.g. for py-spy record
        control: MongoClient[dict[str, Any]] = MongoClient(uri)
        ctx = Context(uri=uri, db_name=f"mjq_bench_lean_{os.getpid()}", control=control, server_pid=server_pid)
        contenders: list[Contender] = []
        if args.only != "limit":
            contenders.append(MjqContender(ctx, "default", json.loads(args.config)))
        if args.only != "mjq":
            contenders.append(PymongoLoop(ctx))
        try:
            for c in contenders:
                c.prepare()
                c.start(args.concurrency)
            _drain_once(contenders[0], 20, server_pid)  # warm-up: imports, connections, indexes
            for r in range(args.rounds):
                order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
                got = {c.name: _row(_drain_once(c, args.jobs, server_pid)) for c in order}
                rounds.append(got)
                print(json.dumps({"round": r + 1, **got}), file=sys.stderr, flush=True)
        finally:
            for c in contenders:
                c.close()
            disconnect()
            control.drop_database(ctx.db_name)
            control.close()
    if len(contenders) == 2:
        mjq, limit = (c.name for c in contenders)
        cpu = [r[mjq]["cpu_us"] / r[limit]["cpu_us"] for r in rounds]
        rate = [r[mjq]["jobs_s"] / r[limit]["jobs_s"] for r in rounds]
        print(f"worker CPU per job / the bare loop's: {_spread(cpu)}  (goal <= 1.3)")
        print(f"throughput / the bare loop's:         {_spread(rate)}  (goal >= 0.8)")
    for c in contenders:
        for key in ("jobs_s", "cpu_us", "server_us"):
            xs = [r[c.name][key] for r in rounds if key in r[c.name]]
            if xs:
                print(f"{c.name:16} {key:10} {_spread(xs)}")
    if write_profile is not None:
        write_profile()
    if args.threads:
        total = args.jobs * args.rounds * len(contenders) + 20
        for role, seconds in sorted(thread_cpu().items(), key=lambda item: -item[1]):
            print(f"thread {role:24} {seconds / total * 1e6:8.0f} us/job")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jobs": args.jobs, "rounds": rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
