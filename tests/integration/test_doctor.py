"""``mongo-job-queue doctor`` on the embedded server, and on deliberately broken setups.

The in-process tests run the checks on a queue; the exit codes are checked
through the real command line, in a subprocess, as a deploy pipeline runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import mongoengine
import pytest
from pymongo import MongoClient

from mongo_job_queue import BaseJob, IndexSetupError, create_job_queue
from mongo_job_queue.clock import utcnow
from mongo_job_queue.doctor import FAIL, PASS, WARN, run_checks
from mongo_job_queue.store.indexes import forget_prepared_collections

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]
APP = "integration.doctor_app:make_queue"
WEAK_ALIAS = "mjq_doctor_w1"


def statuses(queue: Any) -> dict[str, str]:
    return {check.name: check.status for check in run_checks(queue)}


def doctor(uri: str, db: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mongo_job_queue", "doctor", "--app", APP, *args],
        env={
            **os.environ,
            "MONGODB_URI": uri,
            "MJQ_TEST_DB": db,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def by_name(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in json.loads(proc.stdout)["checks"]}


def test_the_embedded_server_passes_with_warnings_only(make_queue) -> None:
    queue = make_queue()
    queue.ensure_indexes()
    found = statuses(queue)
    assert FAIL not in found.values(), found
    assert found["write concern"] == PASS and found["indexes"] == PASS and found["ttl indexes"] == PASS
    assert found["change streams"] == PASS and found["clock offset"] == PASS and found["shard key"] == PASS
    assert found["topology"] == WARN  # one member: no second copy


def test_the_doctor_builds_no_index_it_reports_missing(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.ensure_indexes()
    raw_db.jobs.drop_index("mjq_lease")
    found = {check.name: check for check in run_checks(queue)}
    assert found["indexes"].status == FAIL and "mjq_lease" in found["indexes"].detail
    assert "mjq_lease" not in raw_db.jobs.index_information()  # reported, not repaired


def test_a_duplicate_index_warns(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.ensure_indexes()
    raw_db.jobs.create_index([("status", 1), ("lease_expires_at", 1)], name="by_hand")
    check = next(c for c in run_checks(queue) if c.name == "indexes")
    assert check.status == WARN and "by_hand and mjq_lease" in check.detail


def test_a_ttl_index_that_deletes_unfinished_jobs_fails(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.ensure_indexes()
    raw_db.jobs.create_index([("created_at", 1)], name="old_jobs", expireAfterSeconds=3600)
    check = next(c for c in run_checks(queue) if c.name == "ttl indexes")
    assert check.status == FAIL and "old_jobs" in check.detail


def test_retention_other_than_the_config_warns(make_queue) -> None:
    make_queue(retention_completed_ms=60_000).ensure_indexes()
    check = next(c for c in run_checks(make_queue()) if c.name == "ttl indexes")
    assert check.status == WARN and "completed: 60 s here" in check.detail


def _doctor_and_library(make_queue: Any) -> tuple[Any, str | None]:
    """The doctor's index check, and whether a fresh process can then start (its first enqueue)."""
    check = next(c for c in run_checks(make_queue()) if c.name == "indexes")
    forget_prepared_collections()  # a fresh process: it creates and checks the indexes at its first use
    try:
        make_queue().enqueue("t", {})
        return check, None
    except IndexSetupError as exc:
        return check, str(exc)


def test_a_unique_index_recreated_without_sparse_fails_as_the_library_refuses_it(make_queue, raw_db) -> None:
    make_queue().ensure_indexes()
    raw_db.jobs.drop_index("mjq_unique")
    raw_db.jobs.create_index([("unique_key", 1)], name="mjq_unique", unique=True)
    check, refused = _doctor_and_library(make_queue)
    assert refused is not None  # workers cannot start: the doctor must not pass
    assert check.status == FAIL and "mjq_unique" in check.detail and "sparse" in check.detail


@pytest.mark.parametrize(
    ("name", "key"), [("mjq_unique", [("unique_key", 1)]), ("mjq_schedule", [("schedule", 1), ("fire_time", 1)])]
)
def test_a_unique_index_replaced_by_a_plain_one_under_another_name_fails(make_queue, raw_db, name, key) -> None:
    make_queue().ensure_indexes()
    raw_db.jobs.drop_index(name)
    raw_db.jobs.create_index(key, name="by_the_app")
    check = next(c for c in run_checks(make_queue()) if c.name == "indexes")
    assert check.status == FAIL and name in check.detail


def test_an_app_ttl_index_limited_to_finished_statuses_by_in_passes(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.ensure_indexes()
    raw_db.jobs.create_index(
        [("finished_at", 1)],
        name="app_ttl",
        expireAfterSeconds=3600,
        partialFilterExpression={"status": {"$in": ["completed", "failed"]}},
    )
    assert statuses(queue)["ttl indexes"] == PASS


def test_a_fresh_collection_warns_once_not_about_retention(make_queue) -> None:
    found = {check.name: check for check in run_checks(make_queue())}
    assert found["indexes"].status == WARN and "does not exist yet" in found["indexes"].detail
    assert found["ttl indexes"].status == PASS


def test_cli_an_unreachable_server_exits_4_within_the_db_timeout(db_name: str) -> None:
    started = time.monotonic()
    proc = doctor("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=20000", db_name, "--db-timeout", "1")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert time.monotonic() - started < 15 and "unreachable within 1s" in proc.stderr


class WeakJob(BaseJob):
    meta = {"collection": "doctor_weak_jobs", "db_alias": WEAK_ALIAS}


@pytest.fixture
def weak_model(mongodb_uri: str, db_name: str) -> Iterator[type[WeakJob]]:
    mongoengine.connect(db=db_name, host=mongodb_uri, alias=WEAK_ALIAS, w=1, uuidRepresentation="standard")
    yield WeakJob
    mongoengine.disconnect(alias=WEAK_ALIAS)


def test_w1_on_a_replica_set_fails_and_says_what_it_risks(weak_model) -> None:
    check = next(c for c in run_checks(create_job_queue(job_model=weak_model)) if c.name == "write concern")
    assert check.status == FAIL
    assert (
        "w=1" in check.detail
        and "runs the job twice" in check.detail
        and "enqueue is lost" in check.detail
        and "w='majority'" in check.action
    )


def test_a_skewed_clock_fails_without_sync_clock_and_passes_with_it(make_queue) -> None:
    def ahead() -> Any:
        return utcnow() + timedelta(seconds=5)

    off = next(c for c in run_checks(make_queue(clock=ahead, sync_clock=False)) if c.name == "clock offset")
    assert off.status == FAIL and "5.0" in off.detail and "ahead of" in off.detail
    on = next(c for c in run_checks(make_queue(clock=ahead)) if c.name == "clock offset")
    assert on.status == PASS and "corrected by sync_clock" in on.detail


# -- the exit codes, through the real command line ---------------------------


def test_cli_exit_zero_on_warnings_and_json(mongodb_uri: str, db_name: str, make_queue) -> None:
    make_queue().ensure_indexes()
    proc = doctor(mongodb_uri, db_name, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = by_name(proc)
    assert {c["status"] for c in checks.values()} <= {PASS, WARN}
    assert json.loads(proc.stdout)["ok"] is True
    text = doctor(mongodb_uri, db_name)
    assert text.returncode == 0 and text.stdout.splitlines()[0].startswith(("PASS", "WARN"))


def test_cli_fails_on_w1_a_dropped_index_and_a_skewed_clock(mongodb_uri: str, db_name: str, make_queue, raw_db) -> None:
    make_queue().ensure_indexes()
    weak = doctor(mongodb_uri, db_name, "--json", MJQ_DOCTOR_W="1")
    assert weak.returncode == 5 and by_name(weak)["write concern"]["status"] == FAIL
    skewed = doctor(mongodb_uri, db_name, "--json", MJQ_DOCTOR_SKEW_S="-3", MJQ_DOCTOR_SYNC_CLOCK="0")
    assert skewed.returncode == 5 and by_name(skewed)["clock offset"]["status"] == FAIL
    raw_db.jobs.drop_index("mjq_claim")
    dropped = doctor(mongodb_uri, db_name)
    assert dropped.returncode == 5
    assert any(line.startswith("FAIL  indexes") and "mjq_claim" in line for line in dropped.stdout.splitlines())


@pytest.fixture(scope="module")
def standalone_uri() -> Iterator[str]:
    """A SecantusDB started without replica set mode (``replica_set_name=None``)."""
    with tempfile.TemporaryDirectory() as path:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("standalone_server.py")), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        uri = proc.stdout.readline().strip()
        assert uri.startswith("mongodb://"), uri
        with MongoClient(uri) as client:
            assert not client.admin.command("hello").get("setName")
        yield uri
        proc.stdin.close()
        proc.wait(timeout=30)


def test_cli_fails_on_a_standalone_server(standalone_uri: str) -> None:
    proc = doctor(standalone_uri, "doctor_standalone", "--json")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    checks = by_name(proc)
    assert checks["topology"]["status"] == FAIL and "replica set" in checks["topology"]["action"]
    assert checks["change streams"]["status"] == WARN
    assert checks["write concern"]["status"] == PASS  # w:1 loses nothing to a failover that cannot happen
