"""Driving the contenders: the server, alternation, repetitions, one function per figure.

Absolute times on a shared machine drift, so contenders are never measured
one after the other in blocks: each repetition (round) runs every contender
once on the same work, and the starting contender rotates from round to
round (A B C, B C A, ...). Ratios to the limit are taken within one round.

A contender that raises is marked "failed: <reason>" and dropped from the
rest of the run; one that cannot run here was marked "skipped: <reason>" by
its ``prepare``. Both stay visible in the table and the JSON.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional, TypeVar

from pymongo import MongoClient, uri_parser

from .contenders import REPO_ROOT, Batch, Contender, Unavailable, die_with_parent
from .contenders.mjq import MjqContender
from .metrics import per_job, process_cpu_seconds
from .plan import Plan
from .report import Results

__all__ = ["database", "prepare_all", "run_enqueue", "run_idle", "run_memory", "run_throughput"]

T = TypeVar("T")
LIMIT = "limit[pymongo]"
CELERY = "celery[kombu-mongodb]"


@contextlib.contextmanager
def database(uri: Optional[str], server_pid: Optional[int] = None) -> Iterator[tuple[str, str, Optional[int]]]:
    """``(uri, description, server pid)``: ``uri`` as given, or a fresh embedded server and its process."""
    if uri:
        yield uri, "external server (--uri / MONGODB_URI)", server_pid
        return
    from mongo_job_queue.dev.embedded import EmbeddedMongo

    with EmbeddedMongo() as server:
        assert server.uri is not None
        proc = getattr(server, "_proc", None)  # the class exposes no pid; the bench only reads its CPU
        yield server.uri, "embedded SecantusDB wire server, in its own process", getattr(proc, "pid", None)


def backend_info(control: MongoClient[dict[str, Any]], uri: str, description: str) -> dict[str, Any]:
    hello = control.admin.command("hello")
    build = control.admin.command("buildInfo")
    host = ",".join(f"{h}:{p}" for h, p in uri_parser.parse_uri(uri)["nodelist"])  # no credentials
    info = {
        "description": description,
        "host": host,
        "server_version": build.get("version"),
        "max_wire_version": hello.get("maxWireVersion"),
        "replica_set": hello.get("setName"),
    }
    info["description"] += f", reports MongoDB {info['server_version']}" + (
        f", replica set {info['replica_set']}" if info["replica_set"] else ""
    )
    return info


def _fail(results: Results, c: Contender, exc: BaseException) -> None:
    reason = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    results.contender(c.name, status=reason.rstrip(": "))
    with contextlib.suppress(Exception):
        c.close()


def guarded(results: Results, c: Contender, fn: Callable[..., T], *args: Any) -> tuple[bool, Optional[T]]:
    """Run ``fn(*args)``; on an error mark ``c`` failed and return ``(False, None)``."""
    if results.status(c.name) != "ok":
        return False, None
    try:
        return True, fn(*args)
    except Exception as exc:  # noqa: BLE001 - any contender error is a result, not a crash
        _fail(results, c, exc)
        return False, None


def prepare_all(contenders: list[Contender], results: Results) -> list[Contender]:
    ready = []
    for c in contenders:
        results.contender(c.name, kind=c.kind, description=c.description)
        try:
            c.prepare()
        except Unavailable as exc:
            results.contender(c.name, status=f"skipped: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001
            _fail(results, c, exc)
            continue
        results.contender(c.name, notes=c.notes, versions=c.versions, wire_bytes_na=c.wire_bytes_na)
        ready.append(c)
    return ready


def _rounds(contenders: list[Contender], reps: int) -> Iterator[tuple[int, Contender]]:
    for rep in range(reps):
        k = rep % max(1, len(contenders))
        for c in contenders[k:] + contenders[:k]:
            yield rep, c


def run_throughput(contenders: list[Contender], plan: Plan, results: Results) -> None:
    """Figures 1-3: throughput, round trips, worker and server CPU and bytes per job, per concurrency level."""
    server_pid = contenders[0].ctx.server_pid if contenders else None
    for jobs in plan.jobs:
        for conc in plan.concurrency:
            params = {"jobs": jobs, "concurrency": conc}
            print(f"throughput: {jobs} jobs, concurrency {conc}", file=sys.stderr, flush=True)
            level = [c for c in contenders if guarded(results, c, _timed, f"{c.name} started", c.start, conc)[0]]
            batches: dict[str, dict[int, Batch]] = {c.name: {} for c in level}
            for rep, c in _rounds(level, plan.reps):
                ok, batch = guarded(results, c, _timed, f"{c.name} round {rep + 1}", _drain_once, c, jobs, server_pid)
                if ok and batch is not None:
                    batches[c.name][rep] = batch
            for c in level:
                guarded(results, c, c.stop_level)
            _record_throughput(results, [c.name for c in contenders], batches, params)


def _timed(label: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, with a progress line on stderr."""
    t0 = time.perf_counter()
    value = fn(*args)
    extra = f" ({value.jobs / value.seconds:.1f} jobs/s)" if isinstance(value, Batch) else ""
    print(f"  {label}: {time.perf_counter() - t0:.1f} s{extra}", file=sys.stderr, flush=True)
    return value


def _drain_once(c: Contender, jobs: int, server_pid: Optional[int] = None) -> Batch:
    """Fill, then drain (timed); the server's CPU is read around the drain only.

    It starts and ends where the contender's clock started and stopped
    (``Batch.server_cpu_start``/``server_cpu_end``), when the contender
    marks them, else when ``drain`` is called and returns.
    """
    c.clear()
    c.fill(jobs)
    cpu0 = process_cpu_seconds(server_pid) if server_pid else None
    batch = c.drain(jobs)
    if server_pid and cpu0 is not None:
        start = batch.server_cpu_start if batch.server_cpu_start is not None else cpu0
        end = batch.server_cpu_end if batch.server_cpu_end is not None else process_cpu_seconds(server_pid)
        batch.server_cpu_seconds = end - start
    c.clear()
    return batch


def _record_throughput(
    results: Results, names: list[str], batches: dict[str, dict[int, Batch]], params: dict[str, Any]
) -> None:
    limit = batches.get(LIMIT, {})
    for name in names:
        status = results.status(name)
        got = batches.get(name, {})
        if status != "ok" or not got:
            results.skip("throughput", name, params, status if status != "ok" else "no result")
            continue
        runs = [got[r] for r in sorted(got)]
        results.add("throughput", name, params, "jobs/s", [b.jobs / b.seconds for b in runs])
        if name != LIMIT and limit:
            ratios = [(got[r].jobs / got[r].seconds) / (limit[r].jobs / limit[r].seconds) for r in got if r in limit]
            if ratios:
                results.add("throughput_vs_limit", name, params, "x", ratios)
        if name.startswith("mjq[") and batches.get(CELERY):
            _record_vs_celery(results, name, got, batches[CELERY], params)
        cpus = [b.cpu_seconds / b.jobs * 1e6 for b in runs if b.cpu_seconds is not None]
        if cpus:
            results.add("cpu_per_job", name, params, "us/job", cpus)
        _record_server_and_bytes(results, name, runs, params)
        # Steady state where the contender can mark it (10%-90% of the batch), else the whole batch.
        counted = [per_job(*b.steady) if b.steady else per_job(b.commands, b.jobs) for b in runs if b.commands]
        window = "jobs 10%-90% of the batch" if all(b.steady for b in runs) else "whole batch"
        whole = [per_job(b.commands, b.jobs)[0] for b in runs if b.commands]
        if counted:
            kinds = sorted({k for _, by, _ in counted for k in by})
            by_command = {k: round(statistics.median([by.get(k, 0.0) for _, by, _ in counted]), 4) for k in kinds}
            hello = round(statistics.median([h for _, _, h in counted]), 4)
            results.add(
                "round_trips_per_job",
                name,
                params,
                "commands/job",
                [total for total, _, _ in counted],
                by_command=by_command,
                hello_per_job=hello,
                window=window,
                whole_batch_per_job=round(statistics.median(whole), 4),
            )


def _record_vs_celery(
    results: Results, name: str, got: dict[int, Batch], celery: dict[int, Batch], params: dict[str, Any]
) -> None:
    """Throughput, worker and server CPU per job over Celery's batch of the same round (issue 16's goals)."""
    rounds = [r for r in got if r in celery]
    rate = [(got[r].jobs / got[r].seconds) / (celery[r].jobs / celery[r].seconds) for r in rounds]
    if rate:
        results.add("throughput_vs_celery", name, params, "x", rate)
    for figure, attr in (("cpu_vs_celery", "cpu_seconds"), ("server_cpu_vs_celery", "server_cpu_seconds")):
        pairs = [(getattr(got[r], attr), getattr(celery[r], attr), r) for r in rounds]
        ratios = [(a / got[r].jobs) / (b / celery[r].jobs) for a, b, r in pairs if a is not None and b]
        if ratios:
            results.add(figure, name, params, "x", ratios)


def _record_server_and_bytes(results: Results, name: str, runs: list[Batch], params: dict[str, Any]) -> None:
    """Server CPU per job and BSON bytes per job (sent, received), or an explicit n/a with why."""
    server = [b.server_cpu_seconds / b.jobs * 1e6 for b in runs if b.server_cpu_seconds is not None]
    if server:
        results.add("server_cpu_per_job", name, params, "us/job", server)
    else:
        results.skip("server_cpu_per_job", name, params, "n/a: server process not here (--uri)")
    seen = [(b.wire_bytes, b.jobs) for b in runs if b.wire_bytes is not None]
    if not seen:
        reason = results.contenders.get(name, {}).get("wire_bytes_na") or "n/a: not seen"
        results.skip("bytes_sent_per_job", name, params, reason)
        results.skip("bytes_received_per_job", name, params, reason)
        return
    results.add("bytes_sent_per_job", name, params, "bytes/job", [s / n for (s, _), n in seen])
    results.add("bytes_received_per_job", name, params, "bytes/job", [r / n for (_, r), n in seen])


def run_enqueue(contenders: list[Contender], plan: Plan, results: Results) -> None:
    """Figure 6: enqueue rate, one by one and in bulk, alternating contenders."""
    n = plan.enqueue_jobs
    for mode in ("one", "bulk"):
        print(f"enqueue rate: {n} jobs, {mode}", file=sys.stderr, flush=True)
        params = {"jobs": n, "mode": mode}
        samples: dict[str, list[float]] = {c.name: [] for c in contenders}
        unsupported: set[str] = set()

        for _, c in _rounds([c for c in contenders if results.status(c.name) == "ok"], plan.reps):
            if c.name in unsupported:
                continue
            ok, seconds = guarded(results, c, _enqueue_once, c, n, mode == "bulk")
            if ok and seconds is None:
                unsupported.add(c.name)
            elif ok and seconds:
                samples[c.name].append(n / seconds)
        for c in contenders:
            if results.status(c.name) != "ok":
                results.skip("enqueue_rate", c.name, params, results.status(c.name))
            elif c.name in unsupported:
                results.skip("enqueue_rate", c.name, params, "n/a: no bulk enqueue API")
            elif samples[c.name]:
                results.add("enqueue_rate", c.name, params, "jobs/s", samples[c.name])


def _enqueue_once(c: Contender, jobs: int, bulk: bool) -> Optional[float]:
    c.clear()
    try:
        return c.enqueue(jobs, bulk=bulk)
    finally:
        c.clear()


def run_idle(contenders: list[Contender], plan: Plan, results: Results, rng: random.Random) -> None:
    """Figures 4 and 5: pickup latency and idle cost of each mongo-job-queue config."""
    for c in contenders:
        if not isinstance(c, MjqContender) or "idle" not in c.figures or results.status(c.name) != "ok":
            continue
        poll_max = int(c.config.get("poll_interval_max_ms", 30_000))
        params = {"samples": plan.latency_samples}
        if poll_max > plan.max_idle_poll_ms:
            reason = (
                f"skipped in this run size: poll_interval_max_ms={poll_max} needs about "
                f"{(poll_max / 1000) * 2:.0f} s per sample; run the full size"
            )
            results.skip("pickup_latency", c.name, params, reason)
            results.skip("idle_commands_per_min", c.name, {}, reason)
            continue
        windows = 2  # two consecutive windows: a spread without doubling an already long wait
        print(f"idle worker: {c.name}, {windows} windows, {plan.latency_samples} pickups", file=sys.stderr, flush=True)
        ok, prof = guarded(results, c, c.idle_profile, plan.idle_window_s / windows, windows, plan.latency_samples, rng)
        if not ok or prof is None:
            continue
        window = prof["window_s"]
        counts = prof["idle_commands"]
        per_min = [sum(w.values()) / window * 60 for w in counts]
        names = sorted({k for w in counts for k in w})
        by_command = {k: round(statistics.median([w.get(k, 0) / window * 60 for w in counts]), 2) for k in names}
        results.add(
            "idle_commands_per_min",
            c.name,
            {},
            "commands/min",
            per_min,
            by_command=by_command,
            window_s=round(window * windows, 1),
            poll_max_ms=poll_max,
        )
        latencies_ms = [x * 1000 for x in prof["latencies_s"]]
        results.add("pickup_latency", c.name, params, "ms", latencies_ms, poll_max_ms=poll_max)


def run_memory(ctx_uri: str, db_name: str, contender: Optional[MjqContender], plan: Plan, results: Results) -> None:
    """Figure 7: resident memory of a worker process after N jobs (a subprocess, alone on the server)."""
    if contender is None or results.status(contender.name) != "ok":
        return
    first, last = plan.memory_checkpoints
    print(f"worker memory: {contender.name}, {first} and {last} jobs", file=sys.stderr, flush=True)
    argv = [
        sys.executable,
        "-m",
        "bench.contenders.mjq_memory",
        "--uri",
        ctx_uri,
        "--db",
        db_name,
        "--checkpoints",
        f"{first},{last}",
        "--chunk",
        str(plan.memory_chunk),
        "--config",
        json.dumps({"concurrency": 8, **contender.config}),
        "--timeout",
        str(plan.timeout_s),
    ]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=plan.timeout_s * 4,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
    except subprocess.TimeoutExpired:
        results.skip("worker_rss", contender.name, {"jobs": last}, f"failed: not done in {plan.timeout_s * 4:.0f} s")
        return
    points = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rss = {p["jobs"]: p["rss_mb"] for p in points}
    if proc.returncode != 0 or first not in rss or last not in rss:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        results.skip("worker_rss", contender.name, {"jobs": last}, f"failed: {tail}")
        return
    for jobs in (first, last):
        results.add("worker_rss", contender.name, {"jobs": jobs}, "MiB", [rss[jobs]], rss_at_start_mb=rss.get(0))
    results.figures[-1]["growth_mb"] = round(rss[last] - rss[first], 2)
    if plan.memory_checkpoints != (1_000, 10_000):
        results.figures[-1]["note"] = f"smaller counts than the full run's 1,000/10,000 ({plan.name} size)"
