"""``python -m bench``: measure mongo-job-queue against the limit and its peers.

By default it starts the embedded wire server (in its own process); ``--uri``
or ``MONGODB_URI`` points it at a real ``mongod`` or replica set instead. It
works in its own database, ``mjq_bench_<pid>``, dropped at the end.

Run sizes: ``--tiny`` (the smoke test: a few dozen jobs, one repetition, no
peers), ``--quick`` (a minute or two) and the default full run. It prints a
table and, with ``--json PATH``, writes every sample and its spread.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Optional

from pymongo import MongoClient

from .contenders import Contender, Context
from .contenders.mjq import VARIANTS, MjqContender, disconnect
from .contenders.pymongo_loop import PymongoLoop
from .plan import FULL_EXTERNAL_JOBS, PLANS, Plan
from .report import Results, finish_meta, git_revision, machine_info, package_versions
from .runner import backend_info, database, prepare_all, run_enqueue, run_idle, run_memory, run_throughput

PEERS = ("celery", "agenda", "rq")
NOTES = [
    "pickup latency, idle cost and memory are measured for mongo-job-queue configs only; "
    "peers are compared on throughput, CPU per job, round trips and enqueue rate",
    "ratios to the limit pair each contender with the limit's batch of the same round",
    "p99 of fewer than 100 samples is in effect the maximum",
    "on the embedded server, concurrent claimers contend badly (each claim scans the collection): "
    "the limit's threads each claim on their own; compare concurrency > 1 on a real mongod too (--uri)",
]
PYTHON_PACKAGES = ["mongo-job-queue", "pymongo", "mongoengine", "tenacity", "SecantusDB"]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="mongo-job-queue vs the limit and its peers.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="smoke-test size: no peers, seconds")
    size.add_argument("--quick", action="store_true", help="a small run: a few minutes")
    p.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    p.add_argument("--uri", default=os.environ.get("MONGODB_URI"), help="a real server instead of the embedded one")
    p.add_argument("--jobs", type=_ints, help="queue sizes of the throughput figure, e.g. 200,1000")
    p.add_argument("--reps", type=int, help="repetitions of every measurement")
    p.add_argument("--concurrency", type=_ints, help="concurrency levels, e.g. 1,8,32")
    p.add_argument(
        "--mjq",
        action="append",
        metavar="NAME[=JSON]",
        help=f"a mongo-job-queue config row: one of {', '.join(VARIANTS)}, or NAME={{json config}}; repeatable",
    )
    p.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}; 'none' for none")
    p.add_argument(
        "--server-pid",
        type=int,
        help="with --uri: the server's process id on this machine, to read its CPU (else n/a)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for the RQ reference")
    p.add_argument("--skip", default="", help="figures to skip: enqueue,throughput,idle,memory")
    p.add_argument("--seed", type=int, default=7, help="seed of the random pickup phases")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if plan.name == "full" and args.uri:
        plan = plan.replace(jobs=FULL_EXTERNAL_JOBS)
    overrides: dict[str, Any] = {}
    if args.jobs:
        overrides["jobs"] = args.jobs
    if args.reps:
        overrides["reps"] = args.reps
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    return plan.replace(**overrides) if overrides else plan


def _variant(item: str) -> tuple[str, dict[str, Any]]:
    name, sep, raw = item.partition("=")
    if sep:
        return name, json.loads(raw)
    if name not in VARIANTS:
        raise SystemExit(f"unknown mongo-job-queue config {name!r}; known: {', '.join(VARIANTS)} (or NAME=JSON)")
    return name, VARIANTS[name]


def mjq_contenders(ctx: Context, args: argparse.Namespace, plan: Plan) -> list[Contender]:
    """One row per named config: ``--mjq`` rows take part in every figure, else the plan's split."""
    if args.mjq:
        return [MjqContender(ctx, *_variant(item)) for item in args.mjq]
    rows: dict[str, set[str]] = {}
    for name in plan.mjq_variants:
        rows.setdefault(name, set()).update({"throughput", "enqueue"})
    for name in plan.idle_variants:
        rows.setdefault(name, set()).add("idle")
    return [MjqContender(ctx, *_variant(name), frozenset(figs)) for name, figs in rows.items()]


def build_contenders(ctx: Context, args: argparse.Namespace, plan: Plan) -> list[Contender]:
    contenders = mjq_contenders(ctx, args, plan)
    contenders.append(PymongoLoop(ctx))
    peers = PEERS if plan.peers else ()
    if args.peers:
        peers = () if args.peers == "none" else tuple(p.strip() for p in args.peers.split(","))
    if "celery" in peers:
        from .contenders.celery_mongo import CeleryMongo

        contenders.append(CeleryMongo(ctx))
    if "agenda" in peers:
        from .contenders.agenda import Agenda

        contenders.append(Agenda(ctx))
    if "rq" in peers:
        from .contenders.rq_redis import RqRedis

        contenders.append(RqRedis(ctx, max_procs=plan.rq_max_procs))
    return contenders


def _collect_versions(meta: dict[str, Any], contenders: list[Contender]) -> None:
    for c in contenders:
        meta["versions"].update(c.versions)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup: workers stopped, database dropped


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    plan = make_plan(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    db_name = f"mjq_bench_{os.getpid()}"
    meta: dict[str, Any] = {
        "plan": plan.name,
        "reps": plan.reps,
        "sizes": {k: v for k, v in vars(plan).items() if k != "name"},
        "started_at": started.isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine_info(),
        "versions": package_versions(PYTHON_PACKAGES),
        "notes": NOTES,
    }
    results = Results(meta)
    with database(args.uri, args.server_pid) as (uri, description, server_pid):
        control: MongoClient[dict[str, Any]] = MongoClient(uri)
        meta["backend"] = backend_info(control, uri, description)
        ctx = Context(
            uri=uri,
            db_name=db_name,
            control=control,
            redis_url=args.redis_url,
            timeout_s=plan.timeout_s,
            server_pid=server_pid,
        )
        meta["backend"]["server_pid"] = server_pid
        contenders = build_contenders(ctx, args, plan)
        print(f"preparing {len(contenders)} contenders", file=sys.stderr, flush=True)
        ready = prepare_all(contenders, results)
        first = next((c for c in ready if isinstance(c, MjqContender) and "throughput" in c.figures), None)
        phases = {
            "enqueue": lambda: run_enqueue([c for c in contenders if "enqueue" in c.figures], plan, results),
            "throughput": lambda: run_throughput([c for c in contenders if "throughput" in c.figures], plan, results),
            "idle": lambda: run_idle(ready, plan, results, random.Random(args.seed)),
            "memory": lambda: run_memory(uri, db_name, first, plan, results),
        }
        meta["phase_seconds"] = {}
        meta["complete"] = False
        try:
            for phase, run in phases.items():
                if phase not in skip:
                    t = time.monotonic()
                    run()
                    meta["phase_seconds"][phase] = round(time.monotonic() - t, 1)
                    if args.json:  # a run killed later keeps what it measured so far
                        _collect_versions(meta, contenders)
                        results.write(args.json)
            meta["complete"] = True
        finally:
            for c in contenders:
                try:
                    c.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide the results
                    print(f"closing {c.name}: {exc!r}", file=sys.stderr)
            _collect_versions(meta, contenders)
            disconnect()
            control.drop_database(db_name)
            control.close()
    finish_meta(meta, started)
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    results.print_table()
    if args.json:
        results.write(args.json)
        print(f"results written to {args.json}")
    library_ok = any(results.status(c.name) == "ok" for c in contenders if isinstance(c, MjqContender))
    return 0 if library_ok else 1


if __name__ == "__main__":
    sys.exit(main())
