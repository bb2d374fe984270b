"""Schedules on mongomock, single-threaded: fire times, catch-up policies, validation, listing.

The tests walk time with ``fire_schedules(now)``; nothing sleeps. The
many-process guarantee (one job per fire time) is tested over the wire in
tests/integration/test_schedules.py.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import START, OrgJob, RefJob, TenantJob, raw_docs

from mongo_job_queue import CatchUp, HandlerError, InvalidJobError, Middleware, ScheduleError
from mongo_job_queue.schedules.definition import Schedule

NY = ZoneInfo("America/New_York")


def make(cron: Any = None, every_ms: Any = None, tz: Any = "UTC", **kw: Any) -> Schedule:
    options = {"catch_up": "once", "catch_up_limit": 100, "misfire_grace_ms": 60_000, **kw}
    return Schedule.create("s", cron, "T", every_ms=every_ms, tz=tz, job={}, extra_fields={}, **options)


def fired(queue: Any, now: datetime) -> list[datetime]:
    return [f.fire_time for f in queue.fire_schedules(now) if f.enqueued]


def utc(*args: int) -> datetime:
    return datetime(*args)  # naive UTC, as stored


# -- fire times ----------------------------------------------------------------


def test_cron_fire_times_in_utc_and_with_seconds() -> None:
    hourly = make("0 * * * *")
    assert hourly.next_fire(utc(2026, 1, 1, 10, 0)) == utc(2026, 1, 1, 11, 0)
    assert hourly.next_fire(utc(2026, 1, 1, 10, 0, 0) + timedelta(milliseconds=1)) == utc(2026, 1, 1, 11, 0)
    assert hourly.latest_fire(utc(2026, 1, 1, 10, 0)) == utc(2026, 1, 1, 10, 0)  # inclusive
    assert hourly.latest_fire(utc(2026, 1, 1, 10, 59, 59)) == utc(2026, 1, 1, 10, 0)
    every_5s = make("*/5 * * * * *")
    assert every_5s.next_fire(utc(2026, 1, 1, 10, 0, 3)) == utc(2026, 1, 1, 10, 0, 5)
    assert every_5s.times.newest(utc(2026, 1, 1, 10, 0, 0), utc(2026, 1, 1, 10, 0, 17), 10) == [
        utc(2026, 1, 1, 10, 0, 5),
        utc(2026, 1, 1, 10, 0, 10),
        utc(2026, 1, 1, 10, 0, 15),
    ]


def test_a_daily_local_time_fires_once_on_the_fall_back_day() -> None:
    # 2026-11-01: New York's clocks go from 02:00 EDT back to 01:00 EST.
    daily = make("30 1 * * *", tz="America/New_York")
    fires = daily.times.newest(utc(2026, 10, 31, 12), utc(2026, 11, 3, 12), 10)
    assert fires == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30)]
    # During the repeated hour (01:15 EST), the next fire is tomorrow's, not a second one today.
    assert daily.next_fire(utc(2026, 11, 1, 6, 15)) == utc(2026, 11, 2, 6, 30)


def test_a_local_time_in_the_skipped_hour_fires_once_at_the_end_of_the_gap() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    daily = make("30 2 * * *", tz="America/New_York")
    fires = daily.times.newest(utc(2026, 3, 7, 12), utc(2026, 3, 9, 12), 10)
    assert [f.replace(tzinfo=timezone.utc).astimezone(NY).strftime("%d %H:%M") for f in fires] == [
        "08 03:00",
        "09 02:30",
    ]


def test_an_hourly_local_schedule_keeps_one_hour_steps_across_fall_back() -> None:
    half_hourly = make("*/30 * * * *", tz=NY)
    fires = half_hourly.times.newest(utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 7, 0), 20)
    assert fires == [utc(2026, 11, 1, 4, 0) + timedelta(minutes=30 * i) for i in range(1, 7)]


def test_interval_fire_times_are_counted_from_the_epoch_so_every_process_agrees() -> None:
    every_10s = make(every_ms=10_000)
    assert every_10s.next_fire(utc(2026, 1, 1, 0, 0, 3)) == utc(2026, 1, 1, 0, 0, 10)
    assert every_10s.latest_fire(utc(2026, 1, 1, 0, 0, 10)) == utc(2026, 1, 1, 0, 0, 10)
    assert every_10s.times.newest(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 1, 0), 2) == [
        utc(2026, 1, 1, 0, 0, 50),
        utc(2026, 1, 1, 0, 1, 0),
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("once", [utc(2026, 1, 1, 5)]),
        ("skip", []),
        ("all", [utc(2026, 1, 1, h) for h in (3, 4, 5)]),  # bounded to the 3 most recent
    ],
)
def test_catch_up_policies(policy: str, expected: list[datetime]) -> None:
    hourly = make("0 * * * *", catch_up=policy, catch_up_limit=3)
    due = hourly.due(utc(2026, 1, 1, 0), utc(2026, 1, 1, 5, 30))
    assert due.fires == expected
    assert due.handled == utc(2026, 1, 1, 5)  # skipped ones are handled too: never fired later


def test_skip_still_fires_a_fire_time_within_the_grace() -> None:
    hourly = make("0 * * * *", catch_up=CatchUp.SKIP, misfire_grace_ms=60_000)
    assert hourly.due(utc(2026, 1, 1, 0), utc(2026, 1, 1, 5, 0, 30)).fires == [utc(2026, 1, 1, 5)]


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "schedule name must be a non-empty str"),
        ({"cron_expression": None}, "exactly one"),
        ({"every_ms": 1000}, "exactly one"),
        ({"cron_expression": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron_expression": "0 0 30 2 *"}, "invalid cron expression"),
        ({"cron_expression": "* * *"}, "invalid cron expression"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"timezone": 5}, "timezone must be an IANA name"),
        ({"catch_up": "twice"}, "catch_up must be one of 'once', 'skip', 'all', got 'twice'"),
        ({"catch_up_limit": 0}, "catch_up_limit must be an int from 1 to 10000"),
        ({"misfire_grace_ms": True}, "misfire_grace_ms must be an int from 1 to 31622400000"),
        ({"job_type": ""}, "job_type must be a non-empty str"),
        ({"overlap": "no"}, "overlap must be True or False, got 'no'"),
    ],
)
def test_bad_definitions_are_rejected_and_register_nothing(queue: Any, kwargs: dict[str, Any], message: str) -> None:
    args = {"name": "nightly", "cron_expression": "0 3 * * *", "job_type": "T", **kwargs}
    with pytest.raises(ScheduleError, match=message):
        queue.schedule(**args)
    assert queue.schedules() == []


def test_an_interval_takes_no_timezone(queue: Any) -> None:
    with pytest.raises(ScheduleError, match="timezone applies to cron expressions"):
        queue.schedule("sync", job_type="T", every_ms=60_000, timezone="Europe/Paris")
    with pytest.raises(ScheduleError, match="every_ms must be an int from 100 to 31622400000, got 99"):
        queue.schedule("sync", job_type="T", every_ms=99)


def test_an_interval_too_long_to_compute_is_rejected_when_scheduling(queue: Any) -> None:
    # 3e14 ms is about 9500 years: its next fire time is past the dates datetime can hold.
    with pytest.raises(ScheduleError, match="every_ms must be an int from 100 to 31622400000, got 300000000000000"):
        queue.schedule("huge", job_type="T", every_ms=3 * 10**14)
    assert queue.schedules() == []
    queue.schedule("yearly", job_type="T", every_ms=366 * 24 * 3600 * 1000)  # the longest
    assert queue.fire_schedules(utc(2026, 1, 1)) == []
    assert queue.scheduler.next_due(utc(2026, 1, 1)) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": {"$bad": 1}}, "data"),
        ({"priority": "high"}, "priority must be an int"),
        ({"queue": ""}, "queue must be a non-empty str"),
        ({"status": "completed"}, "managed by the queue"),
        ({"colour": "red"}, "OrgJob has no field 'colour'"),
    ],
)
def test_a_bad_job_is_rejected_when_scheduling_not_at_the_first_fire(
    queue: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        queue.schedule("nightly", "0 3 * * *", "T", **kwargs)
    assert queue.schedules() == [] and raw_docs() == []


def test_the_app_model_validates_its_own_required_fields(make_queue: Any) -> None:
    queue = make_queue(TenantJob)
    with pytest.raises(InvalidJobError, match="tenant"):
        queue.schedule("nightly", "0 3 * * *", "T")
    queue.schedule("nightly", "0 3 * * *", "T", tenant="acme")
    queue.fire_schedules(utc(2026, 1, 1, 2))
    assert fired(queue, utc(2026, 1, 1, 3)) == [utc(2026, 1, 1, 3)]
    assert TenantJob.objects.get().tenant == "acme"


def test_a_duplicate_name_is_rejected(queue: Any) -> None:
    queue.schedule("nightly", "0 3 * * *", "T")
    with pytest.raises(ScheduleError, match="already registered"):
        queue.schedule("nightly", "0 4 * * *", "T")
    with pytest.raises(ScheduleError, match="already registered"):
        queue.periodic("nightly", "0 4 * * *")(lambda job: None)
    assert "nightly" not in queue.registry  # the decorator registered no handler either
    queue.register_handler("cleanup", lambda job: None)
    with pytest.raises(HandlerError, match="already registered"):
        queue.periodic("cleanup", every_ms=60_000)(lambda job: None)
    assert queue.scheduler.get("cleanup") is None  # nor a schedule when the handler is refused


def test_without_the_cron_extra_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['cronsim'] = None\n"
        "from mongo_job_queue.schedules.definition import Schedule\n"
        "from mongo_job_queue import ScheduleError\n"
        "try:\n"
        "    Schedule.create('s', '* * * * *', 'T', every_ms=None, tz='UTC', catch_up='once',"
        " catch_up_limit=1, misfire_grace_ms=1, job={}, extra_fields={})\n"
        "except ScheduleError as exc:\n"
        "    print(exc)\n"
        "Schedule.create('s', None, 'T', every_ms=1000, tz='UTC', catch_up='once',"
        " catch_up_limit=1, misfire_grace_ms=1, job={}, extra_fields={})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "python -m pip install '.[cron]' in a checkout of mongo-job-queue" in out.stdout


# -- firing through the queue --------------------------------------------------


def test_a_new_schedule_fires_at_its_next_fire_time_not_at_once(queue: Any) -> None:
    queue.schedule("hourly", "0 * * * *", "T", {"report": "x"}, queue="reports", priority=5)
    assert fired(queue, utc(2026, 1, 1, 10, 30)) == []  # first sight: 10:00 is past, not due
    assert fired(queue, utc(2026, 1, 1, 10, 59)) == []
    assert fired(queue, utc(2026, 1, 1, 11, 0, 0, 5000)) == [utc(2026, 1, 1, 11)]
    assert fired(queue, utc(2026, 1, 1, 11, 20)) == []  # handled: never twice
    doc = raw_docs()[0]
    assert (doc["schedule"], doc["fire_time"], doc["run_at"]) == ("hourly", utc(2026, 1, 1, 11), utc(2026, 1, 1, 11))
    assert (doc["type"], doc["data"], doc["queue"], doc["priority"]) == ("T", {"report": "x"}, "reports", 5)


def test_each_fire_time_gets_one_job_even_when_its_handled_mark_is_lost(queue: Any) -> None:
    # As if a process crashed between inserting the job and recording the fire time.
    queue.schedule("hourly", "0 * * * *", "T")
    queue.fire_schedules(utc(2026, 1, 1, 10, 30))
    assert fired(queue, utc(2026, 1, 1, 11, 0, 1)) == [utc(2026, 1, 1, 11)]
    control = OrgJob._get_db()[f"{OrgJob._get_collection_name()}_control"]
    control.update_one({"_id": "schedule:hourly"}, {"$set": {"handled": {}}})
    control.update_one(
        {"_id": "schedule:hourly"},
        {"$set": {f"handled.{queue.scheduler.get('hourly').fingerprint}": utc(2026, 1, 1, 10)}},
    )
    fires = queue.fire_schedules(utc(2026, 1, 1, 11, 0, 2))
    assert [(f.fire_time, f.enqueued) for f in fires] == [(utc(2026, 1, 1, 11), False)]
    assert len(raw_docs()) == 1


@pytest.mark.parametrize(("policy", "count"), [("once", 1), ("skip", 0), ("all", 4)])
def test_missed_fires_after_an_outage_follow_the_policy(queue: Any, policy: str, count: int) -> None:
    queue.schedule("hourly", "0 * * * *", "T", catch_up=policy, catch_up_limit=4)
    queue.fire_schedules(utc(2026, 1, 1, 10, 30))
    enqueued = fired(queue, utc(2026, 1, 2, 10, 30))  # a day without any worker
    assert len(enqueued) == count
    assert enqueued == sorted(enqueued) and all(t <= utc(2026, 1, 2, 10) for t in enqueued)
    assert fired(queue, utc(2026, 1, 2, 11, 0)) == [utc(2026, 1, 2, 11)]  # back on time afterwards


def test_a_changed_definition_starts_afresh_and_the_old_one_stops(make_queue: Any) -> None:
    old = make_queue()
    old.schedule("report", "0 3 * * *", "T")
    old.fire_schedules(utc(2026, 1, 1, 2))
    new = make_queue()  # the next deploy
    new.schedule("report", "0 * * * *", "T")
    assert fired(new, utc(2026, 1, 1, 10, 30)) == []  # no catch-up of hours the old definition never had
    assert fired(new, utc(2026, 1, 1, 11)) == [utc(2026, 1, 1, 11)]


def test_going_back_to_an_earlier_definition_starts_it_afresh_without_replaying(make_queue: Any) -> None:
    # Billing at 03:00 (catch_up="all"), moved to 04:00 for five days, then rolled back.
    a = make_queue()
    a.schedule("billing", "0 3 * * *", "T", catch_up="all")
    a.fire_schedules(utc(2026, 1, 1, 2))
    assert fired(a, utc(2026, 1, 1, 3)) == [utc(2026, 1, 1, 3)]
    b = make_queue()  # the deploy of B; A's processes stop
    b.schedule("billing", "0 4 * * *", "T", catch_up="all")
    b.fire_schedules(utc(2026, 1, 1, 12))
    for day in range(2, 7):
        assert fired(b, utc(2026, 1, day, 4)) == [utc(2026, 1, day, 4)]
    back = make_queue()  # the rollback to A, on day 6 at 10:00
    back.schedule("billing", "0 3 * * *", "T", catch_up="all")
    assert fired(back, utc(2026, 1, 6, 10)) == []  # not days 2 to 6 at 03:00, which B covered
    assert fired(back, utc(2026, 1, 7, 3)) == [utc(2026, 1, 7, 3)]
    assert len(raw_docs()) == 1 + 5 + 1


def test_during_a_rolling_deploy_both_definitions_fire_by_their_own_times(make_queue: Any) -> None:
    old, new = make_queue(), make_queue()
    old.schedule("report", "0 */2 * * *", "T")
    old.fire_schedules(utc(2026, 1, 1, 0, 30))
    new.schedule("report", "0 */3 * * *", "T")
    new.fire_schedules(utc(2026, 1, 1, 0, 40))
    enqueued = []
    for hour in range(1, 13):  # both keep running; each fires at its own fire times
        for process in (old, new):
            enqueued += fired(process, utc(2026, 1, 1, hour))
    assert enqueued == [utc(2026, 1, 1, h) for h in (2, 3, 4, 6, 8, 9, 10, 12)]  # 06:00 and 12:00 once


def test_a_definition_back_after_an_outage_with_no_other_catches_up(queue: Any, make_queue: Any) -> None:
    queue.schedule("hourly", "0 * * * *", "T")
    queue.fire_schedules(utc(2026, 1, 1, 10, 30))
    queue.unschedule("hourly")  # removed from the code, or every worker down
    back = make_queue()
    back.schedule("hourly", "0 * * * *", "T")
    assert fired(back, utc(2026, 1, 1, 14, 30)) == [utc(2026, 1, 1, 14)]  # catch_up="once"


def test_unschedule_stops_firing_from_this_process(queue: Any) -> None:
    queue.schedule("hourly", "0 * * * *", "T")
    queue.fire_schedules(utc(2026, 1, 1, 10, 30))
    assert queue.unschedule("hourly") is True and queue.unschedule("hourly") is False
    assert queue.fire_schedules(utc(2026, 1, 1, 11, 30)) == []
    assert raw_docs() == []


def test_listing_shows_next_and_last_fire_and_schedules_known_only_from_the_database(
    make_queue: Any, clock: Any
) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: "ok")
    queue.schedule("hourly", "0 * * * *", "T")
    queue.fire_schedules(START)
    clock.advance(seconds=3600)
    queue.fire_schedules(START + timedelta(hours=1))
    assert queue.drain() == 1
    other = make_queue()  # a process whose code no longer has the schedule
    other.schedule("nightly", "0 3 * * *", "T", timezone="Europe/Paris")
    listing = {s.name: s for s in other.schedules()}
    hourly, nightly = listing["hourly"], listing["nightly"]
    assert (hourly.registered, hourly.next_fire, hourly.when) == (False, None, "cron '0 * * * *' in UTC")
    assert (hourly.last_fire, hourly.last_status) == (utc(2024, 1, 1, 13), "completed")
    assert hourly.last_job_id == raw_docs()[0]["_id"]
    assert nightly.registered and nightly.when == "cron '0 3 * * *' in Europe/Paris"
    assert nightly.next_fire == utc(2024, 1, 2, 2)  # 03:00 in Paris, winter
    assert nightly.last_fire is None


def test_a_job_inserted_early_by_a_fast_clock_still_runs_at_its_fire_time(queue: Any, clock: Any) -> None:
    queue.register_handler("T", lambda job: None)
    queue.schedule("minutely", "* * * * *", "T")
    queue.fire_schedules(START - timedelta(minutes=1))
    # Another process whose clock is 5 s ahead fires 12:01 at 12:00:55 by this one's.
    clock.now = START + timedelta(seconds=55)
    assert fired(queue, START + timedelta(minutes=1)) == [START + timedelta(minutes=1)]
    assert queue.run_once() is None
    clock.now = START + timedelta(minutes=1)
    assert queue.run_once().status == "completed"


def test_without_overlap_a_fire_is_skipped_while_the_previous_job_is_unfinished(queue: Any, clock: Any) -> None:
    queue.register_handler("T", lambda job: None)
    queue.schedule("slow", "0 * * * *", "T", overlap=False)
    queue.fire_schedules(START - timedelta(minutes=30))
    assert fired(queue, START) == [START]
    assert fired(queue, START + timedelta(hours=1)) == []  # 12:00's job has not run: 13:00 is skipped
    clock.now = START + timedelta(hours=1, minutes=30)
    assert queue.drain() == 1
    assert fired(queue, START + timedelta(hours=2)) == [START + timedelta(hours=2)]  # 13:00 is not caught up
    assert [d["fire_time"] for d in raw_docs()] == [START, START + timedelta(hours=2)]


def test_the_payload_is_copied_when_the_schedule_is_defined(queue: Any) -> None:
    data = {"items": [1]}
    queue.schedule("hourly", "0 * * * *", "T", data)
    data["items"].append(2)
    queue.fire_schedules(utc(2026, 1, 1, 9, 30))
    queue.fire_schedules(utc(2026, 1, 1, 10))
    assert raw_docs()[0]["data"] == {"items": [1]}


def test_the_decorator_registers_the_handler_and_the_schedule(queue: Any) -> None:
    ran: list[Any] = []

    @queue.periodic("cleanup", every_ms=60_000, data={"days": 7}, max_retries=0)
    def cleanup(job: Any) -> None:
        ran.append(job.data)

    assert "cleanup" in queue.registry and queue.scheduler.get("cleanup").job_type == "cleanup"
    queue.fire_schedules(START - timedelta(minutes=1))
    queue.fire_schedules(START)
    assert queue.drain() == 1 and ran == [{"days": 7}]
    assert raw_docs()[0]["max_retries"] == 0


def test_fired_jobs_go_through_the_middleware_once(make_queue: Any) -> None:
    seen: list[str] = []

    class Record(Middleware):
        def after_enqueue(self, queue: Any, job: Any) -> None:
            seen.append(f"after {job['schedule']}")

        def on_enqueue_aborted(self, queue: Any, job: Any, exc: Any) -> None:
            seen.append(f"aborted {exc}")

    first, second = make_queue(), make_queue()
    for q in (first, second):
        q.add_middleware(Record())
        q.schedule("hourly", "0 * * * *", "T")
        q.fire_schedules(utc(2026, 1, 1, 10, 30))
    first.fire_schedules(utc(2026, 1, 1, 11))
    # The second process read the state before the first recorded 11:00 handled.
    second.store.control.advance_schedule = lambda *a: None  # type: ignore[method-assign]
    control = OrgJob._get_db()[f"{OrgJob._get_collection_name()}_control"]
    fingerprint = second.scheduler.get("hourly").fingerprint
    control.update_one({"_id": "schedule:hourly"}, {"$set": {f"handled.{fingerprint}": utc(2026, 1, 1, 10)}})
    second.fire_schedules(utc(2026, 1, 1, 11))
    assert seen == ["after hourly", "aborted None"]


def test_in_eager_mode_a_fired_job_runs_at_once(queue: Any) -> None:
    ran: list[Any] = []
    queue.register_handler("T", lambda job: ran.append(job.fire_time))
    queue.eager = True
    queue.schedule("hourly", "0 * * * *", "T")
    queue.fire_schedules(utc(2026, 1, 1, 10, 30))
    queue.fire_schedules(utc(2026, 1, 1, 11))
    assert ran == [utc(2026, 1, 1, 11)] and raw_docs()[0]["status"] == "completed"


def test_a_schedule_that_cannot_insert_does_not_stop_the_others_and_stays_due(make_queue: Any) -> None:
    queue = make_queue(RefJob)
    blocker = queue.enqueue("T", {}, ref="shared")
    queue.schedule("a", "0 * * * *", "T", ref="shared")  # the app's unique index rejects its jobs
    queue.schedule("b", "0 * * * *", "T")
    queue.fire_schedules(utc(2026, 1, 1, 9, 30))
    with pytest.raises(InvalidJobError, match="unique index"):
        queue.fire_schedules(utc(2026, 1, 1, 10, 0, 1))
    assert [d.get("schedule") for d in raw_docs(RefJob)] == [None, "b"]  # "a" failed first; "b" still fired
    RefJob._get_collection().delete_one({"_id": blocker.id})  # the conflict is resolved
    assert [(f.schedule, f.enqueued) for f in queue.fire_schedules(utc(2026, 1, 1, 10, 0, 2))] == [("a", True)]


class Unreadable:
    """Fire times that cannot be computed, as an interval past the dates datetime holds once could not."""

    def after(self, moment: datetime) -> datetime:
        raise OverflowError("date value out of range")

    def newest(self, after: Any, until: datetime, limit: int) -> list[datetime]:
        raise OverflowError("date value out of range")


def test_a_schedule_whose_fire_times_cannot_be_computed_backs_off_alone(
    queue: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    broken = queue.schedule("broken", job_type="T", every_ms=60_000)
    queue.unschedule("broken")
    queue.scheduler.add(dataclasses.replace(broken, times=Unreadable()))
    queue.schedule("minutely", job_type="T", every_ms=60_000)
    queue.ensure_indexes()
    due_at = None
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        for _ in range(10 * 60):  # ten minutes in steps of a second, as the scheduler thread would wake
            if due_at is None or clock.now >= due_at:
                due_at = queue.scheduler.step(clock.now)
            clock.advance(seconds=1)
    docs = raw_docs()
    assert [d["fire_time"] for d in docs] == [START + timedelta(minutes=m) for m in range(1, 10)]
    assert all(d["created_at"] == d["fire_time"] for d in docs)  # on time, not after a backoff
    retries = [r.getMessage() for r in caplog.records if "trying it again" in r.getMessage()]
    expected = "schedule broken failed {} time(s) in a row; trying it again in {}s, the others on time"
    assert retries[:7] == [expected.format(n, min(60, 2**n)) for n in range(1, 8)]
    assert len(retries) == 14  # 2 + 4 + ... + 32 s, then every 60 s: not at each of the 600 wake-ups


# -- the old module paths ------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("mongo_job_queue.schedule", "Schedule", "mongo_job_queue.schedules.definition"),
        ("mongo_job_queue.schedule", "CatchUp", "mongo_job_queue.schedules.definition"),
        ("mongo_job_queue.scheduler", "Fire", "mongo_job_queue.schedules.service"),
        ("mongo_job_queue.scheduler", "Scheduler", "mongo_job_queue.schedules.service"),
        ("mongo_job_queue.queue_schedule", "ScheduleInfo", "mongo_job_queue.schedules.manager"),
    ],
)
def test_an_old_module_path_still_works_and_warns(old: str, name: str, new: str) -> None:
    import importlib

    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old}.{name} moved to {new}.{name}")):
        moved = getattr(module, name)
    assert moved is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="ScheduleMixin"):
        importlib.import_module("mongo_job_queue.queue_schedule").ScheduleMixin  # noqa: B018 - gone, not moved


def test_the_library_itself_imports_no_deprecated_path() -> None:
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import mongo_job_queue, mongo_job_queue.cli, mongo_job_queue.testing, mongo_job_queue.contrib\n"
        "from mongo_job_queue.schedules import definition, fire_times, manager, service\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
