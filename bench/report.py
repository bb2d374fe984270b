"""Results: what was measured where, the printed table and the JSON file.

The JSON holds the machine (CPU, memory, load average before and after: a
busy machine shows there), the backend and every version, each contender's
status ("ok", "skipped: ...", "failed: ...") and every figure with its
samples and their spread. The table prints medians with [min-max].
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, TextIO

from .metrics import percentile, summarize

__all__ = ["Results", "machine_info", "package_versions"]

#: Figures printed as extra rows of another figure's table, with a row label suffix.
COMPANIONS = {
    "cpu_per_job": (("cpu_per_job", ""), ("server_cpu_per_job", " server")),
    "bytes_sent_per_job": (("bytes_sent_per_job", " sent"), ("bytes_received_per_job", " received")),
    "throughput_vs_celery": (
        ("throughput_vs_celery", " throughput"),
        ("cpu_vs_celery", " worker CPU/job"),
        ("server_cpu_vs_celery", " server CPU/job"),
    ),
}

TITLES = {
    "throughput": "Throughput, jobs/s: no-op handler, pre-filled queue",
    "throughput_vs_limit": "Throughput / the limit's throughput in the same round",
    "throughput_vs_celery": "Against Celery in the same round (goals: throughput >= 1, worker CPU per job <= 1)",
    "round_trips_per_job": "Database round trips per job, steady state (commands / jobs, jobs 10%-90% of a batch)",
    "cpu_per_job": (
        "CPU per job, microseconds: the worker process(es), and under it the server process over the same drain"
    ),
    "bytes_sent_per_job": ("Bytes per job, BSON of commands sent / replies received (command monitoring, whole drain)"),
    "pickup_latency": "Pickup latency, ms, enqueue acknowledged -> handler start, worker idle and fully backed off",
    "idle_commands_per_min": "Idle cost: database commands per minute of an idle, backed-off worker",
    "enqueue_rate": "Enqueue rate, jobs/s (one by one; bulk where there is an API)",
    "worker_rss": "Worker resident memory, MiB, after N jobs (completed jobs deleted as it goes)",
}
COLUMN = {
    "throughput": "concurrency",
    "throughput_vs_limit": "concurrency",
    "throughput_vs_celery": "concurrency",
    "cpu_vs_celery": "concurrency",
    "server_cpu_vs_celery": "concurrency",
    "round_trips_per_job": "concurrency",
    "cpu_per_job": "concurrency",
    "server_cpu_per_job": "concurrency",
    "bytes_sent_per_job": "concurrency",
    "bytes_received_per_job": "concurrency",
    "enqueue_rate": "mode",
    "worker_rss": "jobs",
}


def package_versions(names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            info["cpu_model"] = models[0]
        with open("/proc/meminfo") as f:
            info["memory_mib"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def git_revision() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parents[1],
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Results:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.contenders: dict[str, dict[str, Any]] = {}
        self.figures: list[dict[str, Any]] = []

    def contender(self, name: str, **fields: Any) -> None:
        self.contenders.setdefault(name, {"status": "ok", "notes": []}).update(fields)

    def status(self, name: str) -> str:
        return str(self.contenders.get(name, {}).get("status", "ok"))

    def add(
        self, figure: str, contender: str, params: dict[str, Any], unit: str, samples: list[float], **extra: Any
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"figure": figure, "contender": contender, "params": params, "unit": unit}
        entry.update(status="ok", stats=summarize(samples), samples=[round(s, 6) for s in samples], **extra)
        if figure == "pickup_latency":
            entry["p50"] = round(percentile(samples, 50), 3)
            entry["p99"] = round(percentile(samples, 99), 3)
        self.figures.append(entry)
        return entry

    def skip(self, figure: str, contender: str, params: dict[str, Any], status: str) -> None:
        self.figures.append({"figure": figure, "contender": contender, "params": params, "status": status})

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "contenders": self.contenders, "figures": self.figures}

    def write(self, path: str) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")

    # -- table ------------------------------------------------------------------

    def print_table(self, out: TextIO = sys.stdout) -> None:
        m = self.meta
        print(f"\nmongo-job-queue benchmark ({m.get('plan')}, {m.get('reps')} repetition(s))", file=out)
        print(f"backend: {m.get('backend', {}).get('description')}", file=out)
        machine = m.get("machine", {})
        print(f"machine: {machine.get('cpu_model', '?')}, {machine.get('cpu_count')} CPU", file=out)
        for name, c in self.contenders.items():
            if c["status"] != "ok":
                print(f"  {name}: {c['status']}", file=out)
        for figure, title in TITLES.items():
            parts = dict(COMPANIONS.get(figure, ((figure, ""),)))
            entries = [e for e in self.figures if e["figure"] in parts]
            if len(parts) > 1:  # the rows of one contender together: worker, then server
                order = list(dict.fromkeys(e["contender"] for e in entries))
                kinds = list(parts)
                entries.sort(key=lambda e: (order.index(e["contender"]), kinds.index(e["figure"])))
            if entries:
                print(f"\n{title}", file=out)
                self._print_figure(figure, entries, out)
        if m.get("notes"):
            print("\nnotes:", file=out)
        for note in m.get("notes", []):
            print(f"  - {note}", file=out)
        print(file=out)

    def _print_figure(self, figure: str, entries: list[dict[str, Any]], out: TextIO) -> None:
        col = COLUMN.get(figure)
        sections: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in entries:
            rest = {k: v for k, v in e["params"].items() if k != col}
            sections[", ".join(f"{k}={v}" for k, v in rest.items())].append(e)
        for label, items in sections.items():
            cols = list(dict.fromkeys(e["params"].get(col, "") for e in items)) if col else [""]
            rows: dict[str, dict[Any, str]] = defaultdict(dict)
            suffix = dict(COMPANIONS.get(figure, ()))
            for e in items:
                rows[e["contender"] + suffix.get(e["figure"], "")][e["params"].get(col, "")] = _cell(figure, e)
            if label:
                print(f"  [{label}]", file=out)
            width = max(len(r) for r in rows) + 2
            cell_w = max([14, *(len(v) + 2 for r in rows.values() for v in r.values())])
            if col:
                print("  " + " " * width + "".join(f"{col[:1]}={c!s:<{cell_w - 2}}" for c in cols), file=out)
            for name, cells in rows.items():
                line = "".join(f"{cells.get(c, '-'):<{cell_w}}" for c in cols)
                print(f"  {name:<{width}}{line}".rstrip(), file=out)
            shown = set()
            for e in items:  # long reasons once, under the table; contender-wide ones are listed at the top
                status = e["status"]
                key = (e["contender"], status)
                if len(status) > _SHORT and key not in shown and self.status(e["contender"]) == "ok":
                    shown.add(key)
                    print(f"    {e['contender']}: {status}", file=out)
            for e in items:
                if "growth_mb" in e:
                    print(f"    {e['contender']}: {e['growth_mb']:+.2f} MiB between the two counts", file=out)
                if e.get("note"):
                    print(f"    ({e['note']})", file=out)
            if figure in ("round_trips_per_job", "idle_commands_per_min"):
                for e in items:
                    if e.get("by_command"):
                        parts = ", ".join(f"{k} {v:.3g}" for k, v in e["by_command"].items())
                        if e.get("hello_per_job"):
                            parts += f"; apart: hello {e['hello_per_job']:.3g}"
                        where = f" {col[:1]}={e['params'][col]}" if col else ""
                        print(f"    {e['contender']}{where}: {parts}", file=out)


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


_SHORT = 28


def _cell(figure: str, e: dict[str, Any]) -> str:
    status = str(e["status"])
    if status != "ok":
        return status if len(status) <= _SHORT else status.split(":")[0].split(" ")[0]
    s = e["stats"]
    if figure == "pickup_latency":
        return f"p50 {_num(e['p50'])}  p99 {_num(e['p99'])}  (n={s['n']}, poll max {e.get('poll_max_ms')} ms)"
    if figure == "idle_commands_per_min":
        return f"{_num(s['median'])}/min (over {e.get('window_s')} s)"
    if s["n"] == 1:
        return _num(s["median"])
    return f"{_num(s['median'])} [{_num(s['min'])}-{_num(s['max'])}]"


def finish_meta(meta: dict[str, Any], started: datetime) -> None:
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["duration_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    if hasattr(os, "getloadavg"):
        meta.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
