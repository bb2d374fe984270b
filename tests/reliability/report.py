"""Run the reliability scenarios and print one table of what they did.

From the repository root::

    PYTHONPATH=tests python -m reliability.report            # the whole suite
    PYTHONPATH=tests python -m reliability.report -k kill9   # extra arguments go to pytest

It runs pytest on ``tests/reliability`` with ``MJQ_RELIABILITY_REPORT``
naming a temporary file, to which every :func:`~reliability.harness.check_invariants`
call appends its :class:`~reliability.harness.Report` as a JSON line, and
with a JUnit XML file for each test's outcome. Then it prints one row per
scenario: jobs, worker processes, faults injected (kills, freezes,
failpoint hits, restarts), jobs lost, duplicated executions, the slowest
recovery after an outage, and the test's result. Tests that checked no
invariants appear with their result only. ``MONGODB_URI`` and
``MJQ_RELIABILITY_SCALE`` apply as usual. The exit status is pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COLUMNS = ["scenario", "jobs", "workers", "faults", "lost", "duplicated", "max recovery s", "result"]


def run(pytest_args: list[str]) -> tuple[int, list[dict[str, Any]], dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="mjq-reliability-") as tmp:
        reports_path, junit_path = Path(tmp, "reports.jsonl"), Path(tmp, "junit.xml")
        env = {**os.environ, "MJQ_RELIABILITY_REPORT": str(reports_path)}
        command = [sys.executable, "-m", "pytest", str(HERE), "-q", f"--junitxml={junit_path}", *pytest_args]
        code = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
        reports = [json.loads(line) for line in reports_path.read_text().splitlines()] if reports_path.exists() else []
        outcomes = _outcomes(junit_path) if junit_path.exists() else {}
    return code, reports, outcomes


def _outcomes(junit_path: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(junit_path).iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        result = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                result = "FAILED" if child.tag == "failure" else "ERROR"
            elif child.tag == "skipped":
                result = "skipped"
        outcomes[f"{module}.py::{case.get('name')}"] = result
    return outcomes


def rows(reports: list[dict[str, Any]], outcomes: dict[str, str]) -> list[list[str]]:
    table = []
    reported = set()
    for r in reports:
        reported.add(r["scenario"])
        recovery = r.get("max_recovery_s")
        table.append(
            [
                r["scenario"],
                str(r["jobs"]),
                str(r["workers"]),
                str(r["faults"]),
                str(r["lost"]),
                str(r["duplicated"]),
                "-" if recovery is None else f"{recovery:.2f}",
                outcomes.get(r["scenario"], "?") + ("" if r["ok"] else f" ({len(r['violations'])} violations)"),
            ]
        )
    for scenario, result in outcomes.items():
        if scenario not in reported:
            table.append([scenario, "-", "-", "-", "-", "-", "-", result])
    return sorted(table, key=lambda row: row[0])


def render(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [COLUMNS, *table]) for i in range(len(COLUMNS))]
    numeric = range(1, len(COLUMNS) - 1)

    def line(cells: list[str]) -> str:
        padded = (
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, table)])


def main(argv: list[str] | None = None) -> int:
    code, reports, outcomes = run(list(sys.argv[1:] if argv is None else argv))
    print()
    print(render(rows(reports, outcomes)))
    return code


if __name__ == "__main__":
    sys.exit(main())
