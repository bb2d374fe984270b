"""A worker cut off from the database by a real network partition, longer than its lease, comes back healthy.

The partition is real, not a failpoint: the database server listens on the
root end of a veth pair, the partitioned worker process runs in a network
namespace at its other end (see :mod:`reliability.netns`), and iptables
drops every packet on that link, both ways, for three leases. Its TCP
connections stay open and silent, as when a switch or a security group
drops traffic: nothing is refused, every call just hangs until its time
bound (``db_timeout_ms``) runs out. When the link comes back, the
connections that were open at the cut stay dead (their packets are still
dropped), as when a stateful firewall or a NAT on the path forgot them
during the outage: without a time bound, a call on one of them waits until
TCP gives up, many minutes later.

A second worker outside the partition takes the cut-off worker's job once
its lease expired, and the jobs enqueued meanwhile. After the link heals:

* the partitioned worker's late writes are fenced: its completion of the job
  it lost is not recorded, the job keeps the second worker's outcome;
* its threads are all alive again: it claims and completes new jobs;
* nothing is lost and nothing is completed twice (:func:`check_invariants`).

Skipped, with the reason, only where no network namespace can be made (not
root, no CAP_NET_ADMIN); iproute2 and iptables are installed by
``.ci/netns-tools.sh`` when missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongoengine
import pytest
from helpers import wait_until
from mongoengine import StringField
from pymongo import MongoClient

from mongo_job_queue import BaseJob, create_job_queue

from .harness import TESTS_DIR, WorkerProcess, check_invariants, measure_server_clock
from .netns import Partition, unavailable_reason

pytestmark = pytest.mark.integration

ALIAS = "mjq_partition"
LEASE_MS = 3_000
PARTITION_S = 3 * LEASE_MS / 1000
#: A healed worker is back to work within two leases (pymongo alone, with no
#: bound, waits for its monitor's connectTimeoutMS, 20 s, to interrupt the calls).
RECOVERY_S = 2 * LEASE_MS / 1000
WORKER = {
    "concurrency": 2,
    "lease_ms": LEASE_MS,
    "heartbeat_ms": 500,
    "sweep_ms": 500,
    "max_retries": 3,
    "max_error_history": 50,
    "stop_timeout": 10,
    # The harness's own clients (execution recorder, status writer) are bounded;
    # the queue's connection keeps pymongo's defaults, as an app's would.
    "harness_timeout_ms": 2_000,
}


class PartitionJob(BaseJob):
    """The workers' ``IntegrationJob`` collection (``jobs``), on this test's own server."""

    organization = StringField()
    meta = {"collection": "jobs", "db_alias": ALIAS}


@pytest.fixture(scope="module")
def partition() -> Iterator[Partition]:
    reason = unavailable_reason()
    if reason is not None:
        print(f"\nnetwork partition test skipped: {reason}", file=sys.stderr)
        pytest.skip(reason)
    with Partition() as link:
        yield link


@pytest.fixture
def server(partition: Partition, tmp_path: Path) -> Iterator[str]:
    """A wire server of its own on the root end of the link: the session server listens on loopback only."""
    from secantus import SecantusDBServer

    srv = SecantusDBServer(host=partition.host_addr, port=0, storage_path=str(tmp_path / "db"))
    srv.start()
    try:
        yield srv.uri
    finally:
        partition.heal()
        srv.stop()


class Workers:
    """``reliability.worker`` processes, inside the namespace or not; all killed at teardown."""

    def __init__(self, uri: str, db: str, log_dir: Path, partition: Partition) -> None:
        self.uri, self.db, self.log_dir, self.partition = uri, db, log_dir, partition
        self.started: list[WorkerProcess] = []

    def spawn(self, worker_id: str, *, partitioned: bool) -> WorkerProcess:
        argv = [sys.executable, "-m", "reliability.worker", "--uri", self.uri, "--db", self.db]
        argv += ["--worker-id", worker_id]
        for key, value in WORKER.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        if partitioned:
            argv = self.partition.run_argv(argv)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")] if p),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = self.log_dir / f"{worker_id}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(worker_id, proc, log_path, dict(WORKER))
        self.started.append(worker)
        worker.wait_ready()
        return worker

    def close(self) -> None:
        for worker in self.started:
            if worker.alive():
                worker.proc.kill()
            worker.proc.wait(timeout=30)


def test_a_worker_partitioned_longer_than_its_lease_is_fenced_and_comes_back_healthy(
    partition: Partition, server: str, tmp_path: Path
) -> None:
    db_name = f"mjq_partition_{uuid.uuid4().hex[:8]}"
    mongoengine.connect(db=db_name, host=server, alias=ALIAS, uuidRepresentation="standard")
    client: MongoClient[dict[str, Any]] = MongoClient(server)
    db = client[db_name]
    workers = Workers(server, db_name, tmp_path, partition)
    try:
        _scenario(db, workers, partition, measure_server_clock(client))
    finally:
        workers.close()
        mongoengine.disconnect(alias=ALIAS)
        client.close()


def _scenario(db: Any, workers: Workers, partition: Partition, clock: Any) -> None:
    queue = create_job_queue(job_model=PartitionJob)
    jobs = db.jobs

    def status(job_id: Any) -> str | None:
        doc = jobs.find_one({"_id": job_id}, {"status": 1})
        return doc["status"] if doc else None

    cut_off = workers.spawn("cut-off", partitioned=True)
    # The job the partition interrupts: it runs longer than the partition's first lease.
    long_job = queue.enqueue("WORK", {"sleep_ms": 4_000, "sleep_attempts": 1})
    wait_until(
        lambda: db.executions.find_one({"job_id": long_job.pk, "worker_id": "cut-off"}),
        timeout=30,
        what="the partitioned worker to start the long job",
    )
    healthy = workers.spawn("healthy", partitioned=False)

    partition.cut()
    cut_at = time.monotonic()
    assert partition.cut_flows, "the partitioned worker had no open connection to cut"
    during = [queue.enqueue("WORK", {}).pk for _ in range(4)]
    # The healthy worker rescues the long job once its lease expired, and runs the new ones.
    wait_until(lambda: status(long_job.pk) == "completed", timeout=PARTITION_S + 20, what="the rescued long job")
    wait_until(lambda: all(status(j) == "completed" for j in during), timeout=20, what="jobs enqueued meanwhile")
    assert partition.is_cut, "the healthy worker's work must happen inside the partition"
    time.sleep(max(0.0, cut_at + PARTITION_S - time.monotonic()))  # the scenario's outage: three leases
    # Every call on a cut connection returned within its bound: the heartbeat thread kept beating.
    assert "transient database error in renew_leases" in cut_off.log(), (
        f"the partitioned worker's heartbeat hung on the cut connection:\n{cut_off.log()[-3000:]}"
    )
    # The link is back, but the connections open at the cut stay dead, as when a
    # stateful firewall on the path forgot them during the outage.
    partition.heal(old_flows_dead=True)
    healed_at = time.monotonic()

    # Only the healed worker is left to claim what comes next.
    healthy.proc.send_signal(signal.SIGTERM)
    assert healthy.wait_exit(30) == 0
    after = [queue.enqueue("WORK", {"n": n}).pk for n in range(6)]
    wait_until(
        lambda: all(status(j) == "completed" for j in after),
        timeout=45,
        what=f"the healed worker to run new jobs:\n{cut_off.log()[-3000:]}",
    )
    recovered_in = time.monotonic() - healed_at
    assert recovered_in < RECOVERY_S, f"the healed worker took {recovered_in:.1f}s to run new jobs again"
    assert {d["result"]["worker"] for d in jobs.find({"_id": {"$in": after}})} == {"cut-off"}

    # Its late outcome of the long job was fenced: the rescue's outcome stands.
    long_doc = jobs.find_one({"_id": long_job.pk})
    assert long_doc["result"]["worker"] == "healthy"
    assert long_doc["attempts"] == 2
    assert [e["type"].rsplit(".", 1)[-1] for e in long_doc["errors"]] == ["LeaseExpired"]
    wait_until(
        lambda: db.executions.find_one({"job_id": long_job.pk, "worker_id": "cut-off", "end": {"$ne": None}}),
        timeout=30,
        what="the cut-off worker's handler of the long job to return",
    )
    wait_until(
        lambda: "the lease was lost" in cut_off.log() or "lease lost" in cut_off.log(),
        timeout=15,
        what="the cut-off worker to find its lease lost",
    )

    # Every thread resumed: the pool is whole, the worker says it runs, and no thread died.
    assert cut_off.alive()
    wait_until(
        lambda: (s := db.worker_status.find_one({"_id": "cut-off"})) and s["handler_threads"] == 2 and s["running"],
        timeout=10,
        what="the cut-off worker's status",
    )
    assert "Exception in thread" not in cut_off.log()

    report = check_invariants(
        db,
        expected_jobs=[long_job.pk, *during, *after],
        max_attempts=4,
        workers=2,
        faults=1,
        extra={"partition_s": PARTITION_S, "recovered_in_s": round(recovered_in, 1)},
    )
    assert report.ok
    print(f"\npartition of {PARTITION_S:.0f}s: healed worker back to work {recovered_in:.1f}s after the heal")
