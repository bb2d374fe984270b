"""A worker killed with SIGKILL in the middle of a chunk: every job of the chunk is rescued, its attempt counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

from .chunk_worker import TIMINGS
from .harness import LEASE_EXPIRED

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def victim(mongodb_uri, db_name):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reliability.chunk_worker", mongodb_uri, db_name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_every_job_of_a_killed_chunk_is_rescued_and_counted(victim, make_queue, raw_db) -> None:
    queue = make_queue(**TIMINGS)
    jobs = queue.enqueue_many([{"job_type": "CHUNK", "data": {"n": n}, "max_retries": 3} for n in range(6)])
    ids = {job.id for job in jobs}

    chunk = wait_until(lambda: raw_db.chunks.find_one({}), timeout=30, what="the victim's chunk to start")
    assert set(chunk["ids"]) == ids and chunk["attempts"] == [1] * 6
    docs = list(raw_db.jobs.find({}))
    assert {d["status"] for d in docs} == {"processing"}
    [token] = {d["lease_token"] for d in docs}
    # While the victim lives, its heartbeat renews every lease of the chunk: past the first lease's end, none is due.
    renewed_by = max(d["lease_expires_at"] for d in docs) + timedelta(milliseconds=TIMINGS["lease_ms"])
    wait_until(
        lambda: all(d["lease_expires_at"] >= renewed_by for d in raw_db.jobs.find({})),
        timeout=30,
        what="every lease of the chunk renewed past its first expiry",
    )
    assert queue.recover_orphans() == (0, 0)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)

    reruns: list[list[tuple[Any, int]]] = []
    queue.register_batch_handler("CHUNK", lambda chunk: reruns.append([(j.id, j.attempts) for j in chunk]))
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 6, timeout=30, what="reruns")

    assert sorted(attempt for rerun in reruns for _, attempt in rerun) == [2] * 6
    assert {job_id for rerun in reruns for job_id, _ in rerun} == ids
    for doc in raw_db.jobs.find({}):
        assert doc["attempts"] == 2
        [rescue] = doc["errors"]
        assert rescue["type"] == LEASE_EXPIRED
        assert (rescue["attempt"], rescue["lease_token"]) == (1, token)
