"""The demo, the library's main job, runs to completion over the wire."""

from __future__ import annotations

import io
import re

import pytest

from mongo_job_queue.dev.demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_runs_all_jobs_to_their_expected_state(mongodb_uri, monkeypatch) -> None:
    monkeypatch.setenv("MONGODB_URI", mongodb_uri)
    out = io.StringIO()
    assert run_demo(jobs=60, concurrency=4, out=out, timeout=120) == 0, out.getvalue()
    text = out.getvalue()
    assert "demo OK" in text
    assert "charge_card   failed              3      3" in text
    assert "send_email    completed           2" in text
    assert "60 jobs in" in text
    fired = re.search(r"schedule 'cleanup' \(every 1000 ms\): (\d+) fire time\(s\), (\d+) distinct", text)
    assert fired is not None and fired.group(1) == fired.group(2), text
