"""A lock holder frozen with SIGSTOP past its lease: a newer holder takes over, and the old one's late write is refused.

Kleppmann's case against locks without fencing: the pause outlasts the
lease, so for a while two processes each believe they hold the lock. The
lock cannot prevent that; the token checked by the write makes it harmless.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis_support import fresh_prefix, shared_client

from mongo_job_queue.locks import fenced_update

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
TTL_MS = 2_000


@pytest.fixture
def target(raw_db) -> Any:
    raw_db.fenced_target.drop()
    raw_db.fenced_target.insert_one({"_id": "report", "body": "initial", "fence": 0})
    return raw_db.fenced_target


@pytest.mark.parametrize("backend_name", ["mongodb", "redis"])
def test_a_frozen_holders_late_fenced_write_is_refused(
    backend_name, mongodb_uri, db_name, make_queue, job_model, target
) -> None:
    job_model._get_db().drop_collection(f"{job_model._get_collection_name()}_locks")
    queue = make_queue()
    prefix = fresh_prefix()
    backend: Any = queue.locks
    if backend_name == "redis":
        from mongo_job_queue.contrib.redis import RedisLocks

        backend = RedisLocks(shared_client(), queue, prefix=prefix)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reliability.lock_holder",
            mongodb_uri,
            db_name,
            backend_name,
            prefix,
            "report",
            str(TTL_MS),
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        first = holder.stdout.readline().split()
        assert first[0] == "token", first
        old_token = int(first[1])
        holder.stdin.write("write by-the-first-holder\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["applied", "held"]

        holder.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        # The frozen holder cannot renew: its lease expires and another process takes the lock.
        with queue.lock("report", ttl_ms=30_000, timeout_ms=20_000, backend=backend) as lease:
            assert time.monotonic() - frozen_at >= TTL_MS / 1000 * 0.9  # not before the old lease ran out
            assert lease.token > old_token
            assert fenced_update(target, {"_id": "report"}, {"$set": {"body": "by-the-new-holder"}}, lease.token)

            holder.send_signal(signal.SIGCONT)
            holder.stdin.write("write late-by-the-frozen-holder\n")
            holder.stdin.flush()
            # Its write is refused by the fence, and its lease knows it is lost (by its own clock at least).
            assert holder.stdout.readline().split() == ["refused", "lost"]
            lease.check()  # the new holder is untouched by the old one's wake-up and release
            holder.stdin.close()
            assert holder.wait(30) == 0
            lease.check()
        assert target.find_one({"_id": "report"}) == {
            "_id": "report",
            "body": "by-the-new-holder",
            "fence": lease.token,
        }
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
        holder.wait(30)
