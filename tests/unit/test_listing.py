"""The command line's job listings (store.listing) and the bulk retry: the index each query names, and retries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from bson import ObjectId
from conftest import ALIAS, OrgJob, OtherJob
from mongoengine import BooleanField, ListField, StringField
from pymongo.errors import AutoReconnect, ExecutionTimeout

from mongo_job_queue import BaseJob
from mongo_job_queue.store.listing import JobQuery, JobQueryError, Listing


def _failed(queue: Any, n: int, **fields: Any) -> list[Any]:
    jobs = [queue.enqueue("t", {"n": i}, **fields) for i in range(n)]
    OrgJob._get_collection().update_many({}, {"$set": {"status": "failed"}})
    return [job.id for job in jobs]


def test_each_query_names_the_index_that_answers_it(queue: Any) -> None:
    listing = Listing(queue.store)
    org = listing.app_field("organization", "acme")
    assert org == ("organization", "acme")
    # An app field led by one of the model's indexes: that index, the status only if given.
    assert listing._plan(JobQuery(fields=(org,), job_type="t")) == (
        {"type": "t", "organization": "acme"},
        [("organization", 1), ("created_at", -1)],
    )
    # A status, queue or type: the claim index, every status when none is given (its prefix).
    filt, hint = listing._plan(JobQuery(queue="mail"))
    assert hint == "mjq_claim" and filt == {
        "status": {"$in": ["pending", "processing", "completed", "failed", "cancelled", "blocked"]},
        "queue": "mail",
    }
    # Nothing else: the _id index, newest first.
    assert listing._plan(JobQuery()) == ({}, [("_id", 1)])


@pytest.mark.parametrize(
    ("since", "first_id"),
    [
        (datetime(1960, 1, 1), "000000000000000000000000"),  # no job id holds a time before 1970: every job
        (datetime(1, 1, 1), "000000000000000000000000"),
        (datetime(9999, 12, 31), "ffffffff0000000000000000"),  # nor after 2106
    ],
)
def test_a_creation_time_out_of_the_ids_range_is_bounded(queue: Any, since: datetime, first_id: str) -> None:
    # ObjectId.from_datetime raised "argument out of range" (the CLI's exit 1) for these.
    assert JobQuery(created_since=since).filter(all_statuses=False) == {"_id": {"$gte": ObjectId(first_id)}}
    queue.enqueue("t", {})
    assert len(Listing(queue.store).summaries(JobQuery(created_since=datetime(1960, 1, 1)))) == 1


def test_app_fields_are_the_models_own_and_take_its_values(make_queue: Any, queue: Any) -> None:
    own = r"\(its own fields are organization, tags\)"
    with pytest.raises(JobQueryError, match=r"'status' is not a field of OrgJob " + own):
        Listing(queue.store).app_field("status", "failed")
    with pytest.raises(JobQueryError, match="'colour' is not a field of OrgJob"):
        Listing(queue.store).app_field("colour", "red")
    other = Listing(make_queue(OtherJob).store)
    assert other.app_field("weight", "5") == ("weight", 5)  # converted as the field stores it
    with pytest.raises(JobQueryError, match="'heavy' is not a value of 'weight' of OtherJob"):
        other.app_field("weight", "heavy")


class FlagJob(BaseJob):
    """A model with a boolean and a list field of its own."""

    urgent = BooleanField()
    labels = ListField(StringField(max_length=10))
    meta = {"collection": "unit_flag_jobs", "db_alias": ALIAS}


def test_a_boolean_field_takes_true_or_false_and_a_list_field_one_element(make_queue: Any) -> None:
    # MongoEngine's BooleanField.to_python is bool(text): "false" was True, and an admin "cancel all
    # matching urgent=false" cancelled the urgent jobs (review). A list field refused any value.
    listing = Listing(make_queue(FlagJob).store)
    assert listing.app_field("urgent", "false") == ("urgent", False)
    assert listing.app_field("urgent", " True ") == ("urgent", True)
    assert listing.app_field("urgent", "0") == ("urgent", False)
    with pytest.raises(JobQueryError, match="'maybe' is not a value of 'urgent' of FlagJob: expected true or false"):
        listing.app_field("urgent", "maybe")
    assert listing.app_field("labels", "python") == ("labels", "python")  # matches a job holding it
    with pytest.raises(JobQueryError, match="is not a value of 'labels' of FlagJob"):
        listing.app_field("labels", "x" * 11)


def test_listings_come_newest_first_and_limited(queue: Any) -> None:
    ids = _failed(queue, 3, organization="acme") + _failed(queue, 1, organization="other")
    listing = Listing(queue.store)
    acme = JobQuery(fields=(listing.app_field("organization", "acme"),))
    assert [doc["_id"] for doc in listing.summaries(acme)] == ids[2::-1]
    assert [doc["_id"] for doc in listing.summaries(JobQuery(statuses=("failed",)), limit=2)] == [ids[3], ids[2]]
    assert listing.ids(acme, 2) == [ids[2], ids[1]]
    [summary] = listing.summaries(JobQuery(job_type="t"), limit=1)
    assert "data" not in summary and summary["organization"] == "other"


def test_bulk_retry_retries_those_still_failed_and_counts_a_lost_reply_once(
    queue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _failed(queue, 3)
    OrgJob._get_collection().update_one({"_id": ids[2]}, {"$set": {"status": "completed"}})
    collection = OrgJob._get_collection()
    real = collection.update_many
    calls: list[Any] = []

    def applied_but_reply_lost(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        result = real(*args, **kwargs)
        if len(calls) == 1:
            raise AutoReconnect("reply lost")
        return result

    monkeypatch.setattr(collection, "update_many", applied_but_reply_lost)
    assert queue.store.admin.retry_jobs(ids) == 2
    assert len(calls) == 3  # the first update's reply lost; then both (to pending, to blocked) again
    assert [queue.get_job(i).status for i in ids] == ["pending", "pending", "completed"]
    assert queue.get_job(ids[0]).attempts == 0 and len(queue.get_job(ids[0]).admin_marks) == 1
    assert queue.store.admin.retry_jobs([]) == 0


def test_a_query_out_of_time_says_to_narrow_it_and_is_not_retried(queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collection = OrgJob._get_collection()
    calls: list[Any] = []

    def too_slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise ExecutionTimeout("operation exceeded time limit", 50, {"code": 50})

    monkeypatch.setattr(collection, "find", too_slow)
    with pytest.raises(JobQueryError, match="took longer than 5000 ms: narrow it"):
        Listing(queue.store).summaries(JobQuery(statuses=("failed",)))
    assert len(calls) == 1
