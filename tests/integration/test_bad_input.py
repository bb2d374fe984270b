"""Bad input over the wire: a clear error, and the database exactly as it was."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from mongoengine import StringField

from mongo_job_queue import (
    BaseJob,
    ConfigError,
    HandlerError,
    InvalidJobError,
    InvalidJobIdError,
    JobModelError,
    create_job_queue,
)

from .models import ALIAS

pytestmark = pytest.mark.integration


class UniqueRefJob(BaseJob):
    ref = StringField(unique=True)
    meta = {"collection": "unique_ref_jobs", "db_alias": ALIAS}


BAD_ENQUEUES = {
    "dollar key": (("T", {"$set": 1}), {}),
    "nested dollar key": (("T", {"a": [{"$where": "x"}]}), {}),
    "dotted key": (("T", {"a.b": 1}), {}),
    "not encodable": (("T", {"when": object()}), {}),
    "a set": (("T", {"ids": {1, 2}}), {}),
    "over 16 MB": (("T", {"blob": "x" * (16 * 1024 * 1024)}), {}),
    "too deep": (("T", {"d": eval("[" * 120 + "]" * 120)}), {}),
    "data not a dict": (("T", ["a"]), {}),
    "empty type": (("", {}), {}),
    "bool priority": (("T", {}), {"priority": True}),
    "negative delay": (("T", {}), {"delay_ms": -1}),
    "run_at and delay": (("T", {}), {"delay_ms": 1, "run_at": datetime(2030, 1, 1)}),
    "unknown field": (("T", {}), {"colour": "red"}),
    "library field": (("T", {}), {"attempts": 5}),
    "wrong type for app field": (("T", {}), {"organization": 12}),
    "max_retries over 32 bits": (("T", {}), {"max_retries": 2**31}),
    "max_retries over 64 bits": (("T", {}), {"max_retries": 2**63}),
    "aware run_at before datetime.min in UTC": (
        ("T", {}),
        {"run_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=1)))},
    ),
    "aware run_at after datetime.max in UTC": (
        ("T", {}),
        {"run_at": datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))},
    ),
}


@pytest.mark.parametrize("case", list(BAD_ENQUEUES))
def test_bad_enqueue_raises_and_writes_nothing(make_queue, job_model, case) -> None:
    queue = make_queue()
    args, kwargs = BAD_ENQUEUES[case]
    with pytest.raises(InvalidJobError):
        queue.enqueue(*args, **kwargs)
    assert job_model.objects.count() == 0


def test_bad_job_in_a_batch_writes_nothing(make_queue, job_model) -> None:
    queue = make_queue()
    batch = [{"job_type": "T", "data": {"n": n}} for n in range(10)]
    batch[7]["data"] = {"bad.key": 1}
    with pytest.raises(InvalidJobError, match=r"jobs\[7\]"):
        queue.enqueue_many(batch)
    assert job_model.objects.count() == 0


def test_server_rejection_in_a_batch_removes_the_jobs_inserted_before_it(db_name) -> None:
    UniqueRefJob.drop_collection()  # fresh, no ensure_indexes(): the queue creates the app's unique index too
    queue = create_job_queue(job_model=UniqueRefJob)
    queue.enqueue("T", {}, ref="taken")
    with pytest.raises(InvalidJobError, match=r"jobs\[2\].*2 job\(s\) of the batch removed again"):
        queue.enqueue_many([{"job_type": "T", "ref": r} for r in ["a", "b", "taken", "c"]])
    assert [j.ref for j in UniqueRefJob.objects] == ["taken"]
    with pytest.raises(InvalidJobError, match="unique"):
        queue.enqueue("T", {}, ref="taken")
    assert UniqueRefJob.objects.count() == 1
    UniqueRefJob.drop_collection()


def test_configuration_and_registration_errors_are_clear(job_model) -> None:
    with pytest.raises(ConfigError, match=r"'poll_intervall_ms'.*valid keys are: .*poll_interval_base_ms"):
        create_job_queue(job_model=job_model, config={"poll_intervall_ms": 5})
    with pytest.raises(ConfigError, match="'concurrency' must be an int"):
        create_job_queue(job_model=job_model, config={"concurrency": "8"})
    with pytest.raises(JobModelError):
        create_job_queue(job_model=dict)  # type: ignore[arg-type]
    queue = create_job_queue(job_model=job_model)
    queue.register_handler("T", lambda job: None)
    with pytest.raises(HandlerError, match="already registered"):
        queue.register_handler("T", lambda job: None)
    with pytest.raises(HandlerError, match="callable"):
        queue.register_handler("U", "not a function")  # type: ignore[arg-type]
    assert job_model.objects.count() == 0


@pytest.mark.parametrize("bad_id", [None, "not-an-id", "0" * 23, 12, b"abcdefghijkl"])
@pytest.mark.parametrize("action", ["retry_job", "cancel_job", "get_job"])
def test_job_actions_refuse_a_bad_job_id_and_touch_nothing(make_queue, job_model, action, bad_id) -> None:
    queue = make_queue()
    job = queue.enqueue("T", {}, delay_ms=60_000)
    with pytest.raises(InvalidJobIdError):
        getattr(queue, action)(bad_id)
    assert job_model.objects.get(id=job.id).status == "pending"


@pytest.mark.parametrize("max_retries", [2**31, 2**63, -1, 1.0, True])
def test_handler_max_retries_out_of_range_is_refused_at_registration(make_queue, job_model, max_retries) -> None:
    queue = make_queue()
    with pytest.raises(HandlerError, match="max_retries for 'T' must be an int from 0 to 2147483647"):
        queue.register_handler("T", lambda job: None, max_retries=max_retries)
    assert "T" not in queue.registry
    queue.register_handler("T", lambda job: None, max_retries=2**31 - 1)  # the largest is usable
    assert queue.enqueue("T", {}).max_retries == 2**31 - 1
