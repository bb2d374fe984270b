"""Schedules over the wire: one job per fire time across processes and threads, firing by the worker.

The fire-time arithmetic and the catch-up policies are unit-tested in
tests/unit/test_schedule.py; here the server's unique index and
``$max`` decide between real concurrent processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue import ScheduleError
from mongo_job_queue.store import schedule_state_id

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
PROCESSES = 3


def fire_times(raw_db: Any, schedule: str) -> list[datetime]:
    return [d["fire_time"] for d in raw_db.jobs.find({"schedule": schedule}, {"fire_time": 1}).sort("fire_time", 1)]


def assert_one_job_per_fire_time(times: list[datetime], step: timedelta, at_least: int) -> None:
    assert len(times) >= at_least, times
    assert len(set(times)) == len(times), "a fire time produced more than one job"
    expected = [times[0] + i * step for i in range(len(times))]
    assert times == expected, "a fire time in the window produced no job"


def test_processes_running_the_same_schedules_enqueue_one_job_per_fire_time(mongodb_uri, db_name, raw_db, job_model):
    """Three processes fire two schedules; one is killed halfway; no fire time is doubled or lost."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "integration.schedule_proc", mongodb_uri, db_name],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]

    def count(**extra: Any) -> int:
        return raw_db.jobs.count_documents({"schedule": {"$exists": True}, **extra})

    try:
        # Once firing is under way, one process dies without a word (kill -9): the others carry on alone.
        wait_until(lambda: count(schedule="fast") >= 4, timeout=60, what="first fires")
        procs[0].kill()
        procs[0].wait(30)
        killed_at = raw_db.client.admin.command("hello")["localTime"].replace(tzinfo=None)
        wait_until(
            lambda: (
                count(schedule="fast", created_at={"$gt": killed_at}) >= 5
                and count(schedule="seconds", created_at={"$gt": killed_at}) >= 2
            ),
            timeout=60,
            what="fires after the kill",
        )
        outputs = [proc.communicate("stop\n", timeout=120) for proc in procs[1:]]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert procs[0].returncode == -9
    for proc, (_out, err) in zip(procs[1:], outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    assert_one_job_per_fire_time(fire_times(raw_db, "fast"), timedelta(milliseconds=400), at_least=9)
    assert_one_job_per_fire_time(fire_times(raw_db, "seconds"), timedelta(seconds=1), at_least=2)
    late = count(created_at={"$gt": killed_at})
    assert sum(s["enqueued"] for s in stats) >= late > 0, stats  # the survivors fired after the kill
    assert all(s["enqueued"] + s["duplicates"] > 0 for s in stats), f"every survivor fired: {stats}"


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
def test_concurrent_ticks_that_all_saw_the_fire_time_due_insert_one_job(make_queue, raw_db, overlap) -> None:
    # Force the worst interleaving: every tick reads the state before any of
    # them inserts, so all of them try to insert every fire time.
    threads = 8
    queues = [make_queue() for _ in range(threads)]
    barrier = threading.Barrier(threads, timeout=30)
    for queue in queues:
        queue.schedule("hourly", "0 * * * *", "T", {"n": 1}, overlap=overlap)
        read = queue.store.control.schedule_states

        def read_then_wait(names: Any = None, read: Any = read) -> Any:
            states = read(names)
            barrier.wait()
            return states

        queue.store.control.schedule_states = read_then_wait

    def tick_all(hour: int, minute: int = 0) -> list[Any]:
        now = datetime(2026, 1, 1, hour, minute, 1)
        fires: list[Any] = []
        workers = [threading.Thread(target=lambda q=q: fires.extend(q.fire_schedules(now))) for q in queues]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        return fires

    assert tick_all(9, 30) == []  # first sight of the schedule: nothing due
    for hour in (10, 11, 12):
        fires = tick_all(hour)
        assert len(fires) == threads, fires  # every tick tried
        # Without overlap, 11:00 and 12:00 are skipped: the job of 10:00 has not run yet.
        assert sum(f.enqueued for f in fires) == (1 if overlap or hour == 10 else 0), fires
    raw_db.jobs.update_many({}, {"$set": {"status": "completed", "finished_at": datetime(2026, 1, 1, 12, 30)}})
    assert sum(f.enqueued for f in tick_all(13)) == 1
    expected = (10, 11, 12, 13) if overlap else (10, 13)
    assert fire_times(raw_db, "hourly") == [datetime(2026, 1, 1, h) for h in expected]


def test_a_running_worker_fires_by_itself_and_stops_firing_when_stopped(make_queue, raw_db, caplog) -> None:
    queue = make_queue()
    ran: list[datetime] = []
    queue.register_handler("T", lambda job: ran.append(job.fire_time))
    queue.schedule("often", job_type="T", every_ms=200)
    with caplog.at_level("INFO", logger="mongo_job_queue"):
        queue.start_polling()
        wait_until(lambda: len(ran) >= 3, timeout=30, what="three fires run")
    assert "firing schedules from this process: often (every 200 ms)" in caplog.text
    assert queue.stop(timeout=10)
    count = raw_db.jobs.count_documents({"schedule": "often"})
    holds_for(lambda: raw_db.jobs.count_documents({"schedule": "often"}) == count, 0.6, what="no fire after stop")
    assert_one_job_per_fire_time(fire_times(raw_db, "often"), timedelta(milliseconds=200), at_least=3)


def test_a_schedule_added_to_a_running_worker_fires(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    queue.start_polling()  # no schedule yet: no scheduler thread
    queue.schedule("late", job_type="T", every_ms=200)
    wait_until(lambda: raw_db.jobs.count_documents({"schedule": "late", "status": "completed"}) >= 2, timeout=30)


def test_a_worker_catches_up_once_after_downtime_and_a_process_can_opt_out(make_queue, raw_db, job_model) -> None:
    opted_out = make_queue(run_schedules=False)
    opted_out.register_handler("T", lambda job: None)
    opted_out.schedule("hourly", "0 * * * *", "T")
    opted_out.start_polling()
    # As left by workers that last handled a fire time three hours ago.
    fingerprint = opted_out.scheduler.get("hourly").fingerprint
    now = opted_out.store.now()
    raw_db.jobs_control.insert_one(
        {
            "_id": schedule_state_id("hourly"),
            "kind": "schedule",
            "name": "hourly",
            "handled": {fingerprint: now - timedelta(hours=3)},
            "spec": {},
        }
    )
    holds_for(lambda: raw_db.jobs.count_documents({"schedule": "hourly"}) == 0, 0.5, what="run_schedules=False")
    worker = make_queue()
    worker.register_handler("T", lambda job: None)
    worker.schedule("hourly", "0 * * * *", "T")
    worker.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"schedule": "hourly", "status": "completed"}) == 1, timeout=30)
    latest = now.replace(minute=0, second=0, microsecond=0)
    assert fire_times(raw_db, "hourly") == [latest]  # once: the latest missed fire time only
    handled = raw_db.jobs_control.find_one({"_id": schedule_state_id("hourly")})["handled"][fingerprint]
    assert handled == latest


def test_the_schedule_index_is_unique_and_leaves_other_jobs_out(make_queue, raw_db) -> None:
    make_queue().ensure_indexes()
    index = raw_db.jobs.index_information()["mjq_schedule"]
    assert index["key"] == [("schedule", 1), ("fire_time", 1)]
    assert index["unique"] is True and index["sparse"] is True


def test_an_insert_whose_reply_was_lost_is_recognised_as_this_ticks_own(make_queue, raw_db, failpoint) -> None:
    queue = make_queue()
    queue.schedule("hourly", "0 * * * *", "T")
    queue.fire_schedules(datetime(2026, 1, 1, 9, 30))
    # The insert applies, then its reply reports a write-concern failure: the retry meets its own job.
    failpoint(["insert"], 1, writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"})
    fires = queue.fire_schedules(datetime(2026, 1, 1, 10, 0, 1))
    assert [(f.fire_time, f.enqueued) for f in fires] == [(datetime(2026, 1, 1, 10), True)]
    assert fire_times(raw_db, "hourly") == [datetime(2026, 1, 1, 10)]


def test_the_scheduler_survives_a_database_outage_and_fires_again(make_queue, raw_db, failpoint, caplog) -> None:
    queue = make_queue(db_retry_attempts=2, db_retry_max_delay_ms=50)
    queue.register_handler("T", lambda job: None)
    queue.schedule("often", job_type="T", every_ms=200)
    queue.start_polling()
    wait_until(lambda: raw_db.jobs.count_documents({"schedule": "often"}) >= 1, timeout=30, what="a first fire")
    # Every read fails until a tick has given up after its retries: an outage as long as it takes, whatever
    # else of the worker reads meanwhile (a fixed number of failures could be used up by other components).
    failpoint(["find"], 100_000, errorCode=91, errorLabels=["RetryableWriteError"])
    with caplog.at_level("WARNING", logger="mongo_job_queue"):
        wait_until(lambda: "scheduler tick failed" in caplog.text, timeout=30, what="a failed tick")
        raw_db.client.admin.command("configureFailPoint", "failCommand", mode="off")  # the database is back
        after_outage = raw_db.jobs.count_documents({"schedule": "often"})
        wait_until(
            lambda: raw_db.jobs.count_documents({"schedule": "often"}) >= after_outage + 3,
            timeout=30,
            what="fires after the outage",
        )
    times = fire_times(raw_db, "often")
    assert len(set(times)) == len(times)


class _Unreadable:
    """Fire times that cannot be computed (as ``every_ms=3e14`` once was: past the dates datetime holds)."""

    def after(self, moment: datetime) -> datetime:
        raise OverflowError("date value out of range")

    def newest(self, after: Any, until: datetime, limit: int) -> list[datetime]:
        raise OverflowError("date value out of range")


def test_a_schedule_whose_fire_times_cannot_be_computed_does_not_delay_the_others(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    broken = queue.schedule("broken", job_type="T", every_ms=60_000)
    queue.unschedule("broken")
    queue.scheduler.add(dataclasses.replace(broken, times=_Unreadable()))
    queue.schedule("often", job_type="T", every_ms=200)
    queue.start_polling()
    # Before, the loop backed off every schedule for 2, 4, 8... s: about 4 fires in 15 s.
    wait_until(lambda: raw_db.jobs.count_documents({"schedule": "often"}) >= 10, timeout=15, what="ten fires")
    assert queue.stop(timeout=10)
    assert raw_db.jobs.count_documents({"schedule": "broken"}) == 0


def test_a_rollback_to_an_earlier_definition_replays_nothing(make_queue, raw_db) -> None:
    a = make_queue()
    a.schedule("billing", "0 3 * * *", "T", catch_up="all")
    a.fire_schedules(datetime(2026, 1, 1, 2))
    a.fire_schedules(datetime(2026, 1, 1, 3))
    b = make_queue()
    b.schedule("billing", "0 4 * * *", "T", catch_up="all")
    b.fire_schedules(datetime(2026, 1, 1, 12))
    for day in range(2, 7):
        b.fire_schedules(datetime(2026, 1, day, 4))
    rollback = make_queue()
    rollback.schedule("billing", "0 3 * * *", "T", catch_up="all")
    assert [f for f in rollback.fire_schedules(datetime(2026, 1, 6, 10)) if f.enqueued] == []
    assert [f.fire_time for f in rollback.fire_schedules(datetime(2026, 1, 7, 3))] == [datetime(2026, 1, 7, 3)]
    hours = [t.hour for t in fire_times(raw_db, "billing")]
    assert hours == [3, 4, 4, 4, 4, 4, 3]


def test_a_live_old_definition_catches_up_after_an_outage_in_a_rolling_deploy(make_queue, raw_db) -> None:
    # Old processes fire 'report' at :00 (A), new ones at :05 (B); both run. The database is down
    # 10:58-11:10 for everyone and B's process ticks first when it returns: A's 11:00 was dropped
    # as if A were a definition coming back.
    old, new = make_queue(), make_queue()
    old.schedule("report", "0 * * * *", "report", {}, catch_up="once")
    new.schedule("report", "5 * * * *", "report", {}, catch_up="once")
    for q in (old, new):
        q.fire_schedules(datetime(2026, 1, 1, 9, 59))
    for t in (datetime(2026, 1, 1, 10, 0), datetime(2026, 1, 1, 10, 5)):
        old.fire_schedules(t)
        new.fire_schedules(t)
    new.fire_schedules(datetime(2026, 1, 1, 11, 10))
    old.fire_schedules(datetime(2026, 1, 1, 11, 10, 1))
    assert [t.strftime("%H:%M") for t in fire_times(raw_db, "report")] == ["10:00", "10:05", "11:00", "11:05"]


def test_a_live_old_definition_ticking_late_in_a_rolling_deploy_keeps_its_fire_time(make_queue, raw_db) -> None:
    # A = '0 * * * *' (old), B = 30 s past the hour (new, 6 fields); A's process ticks 40 s late once.
    old, new = make_queue(), make_queue()
    old.schedule("report", "0 * * * *", "report", {}, catch_up="once")
    new.schedule("report", "30 0 * * * *", "report", {}, catch_up="once")
    old.fire_schedules(datetime(2026, 1, 1, 9, 59))
    new.fire_schedules(datetime(2026, 1, 1, 9, 59))
    old.fire_schedules(datetime(2026, 1, 1, 10, 0))
    new.fire_schedules(datetime(2026, 1, 1, 10, 0, 30))
    new.fire_schedules(datetime(2026, 1, 1, 11, 0, 30))
    assert [f.fire_time for f in old.fire_schedules(datetime(2026, 1, 1, 11, 0, 40))] == [datetime(2026, 1, 1, 11)]
    assert raw_db.jobs.count_documents({"fire_time": datetime(2026, 1, 1, 11)}) == 1


@pytest.mark.parametrize(("b_until", "a_catches_up"), [(11, True), (13, False)])
def test_a_definition_counts_as_coming_back_after_twice_its_period_unseen(
    make_queue, raw_db, b_until: int, a_catches_up: bool
) -> None:
    old, new = make_queue(), make_queue()
    old.schedule("report", "0 * * * *", "report", {}, catch_up="once")
    new.schedule("report", "5 * * * *", "report", {}, catch_up="once")
    for q in (old, new):
        q.fire_schedules(datetime(2026, 1, 1, 9, 59))
    old.fire_schedules(datetime(2026, 1, 1, 10, 0))  # A last seen at 10:00; then only B runs
    for hour in range(10, b_until + 1):
        new.fire_schedules(datetime(2026, 1, 1, hour, 5))
    back = old.fire_schedules(datetime(2026, 1, 1, b_until, 10))
    # B fired 1 h 5 min after A was last seen (an outage: catch up), or 3 h 5 min (A was gone: afresh).
    assert [f.fire_time for f in back] == ([datetime(2026, 1, 1, b_until)] if a_catches_up else [])


@pytest.mark.parametrize(
    ("key", "longest"),
    [("misfire_grace_ms", 366 * 24 * 3600 * 1000), ("catch_up_limit", 10_000)],
)
def test_numeric_schedule_parameters_are_bounded_at_definition(make_queue, raw_db, key: str, longest: int) -> None:
    # Past the bound, misfire_grace_ms overflowed a timedelta at every tick: the schedule never fired.
    queue = make_queue()
    for too_big in (longest + 1, 10**17, 10**20):
        with pytest.raises(ScheduleError, match=f"{key} must be an int from 1 to {longest}"):
            queue.schedule("s", "*/5 * * * *", "t", {}, catch_up="skip", **{key: too_big})
    assert queue.schedules() == []
    queue.schedule("s", "*/5 * * * *", "t", {}, catch_up="skip", **{key: longest})  # the boundary is accepted
    queue.fire_schedules(datetime(2026, 1, 1, 0, 0))
    for minute in (5, 10, 15):
        assert [f.enqueued for f in queue.fire_schedules(datetime(2026, 1, 1, 0, minute))] == [True]
    assert raw_db.jobs.count_documents({"schedule": "s"}) == 3
