"""enqueue() and enqueue_many(): stored defaults and fields, and bad input rejected before any write."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import bson
import pytest
from bson import ObjectId
from conftest import START, OrgJob, RefJob, TenantJob, raw_doc, raw_docs
from mongoengine.errors import ValidationError

from mongo_job_queue import InvalidJobError, Middleware, chain, validation


def _count(model: type = OrgJob) -> int:
    return int(model._get_collection().count_documents({}))


@pytest.fixture
def unchanged(queue: Any) -> Callable[..., str]:
    """Seed one job; ``check(fn, ...)`` asserts InvalidJobError (``match`` is literal) and no write."""
    queue.enqueue("seed", {"n": 1}, organization="seed")
    before = raw_docs()

    def check(fn: Callable[..., Any], *args: Any, match: str | None = None, **kwargs: Any) -> str:
        with pytest.raises(InvalidJobError, match=re.escape(match) if match else None) as info:
            fn(*args, **kwargs)
        assert raw_docs() == before
        return str(info.value)

    return check


def test_enqueue_returns_saved_instance_with_extra_field(queue: Any) -> None:
    job = queue.enqueue("email", {"to": "a@example.com"}, organization="acme")
    assert isinstance(job, OrgJob)
    assert isinstance(job.id, ObjectId)
    assert job.organization == "acme"
    assert job.type == "email"
    assert job.data == {"to": "a@example.com"}
    doc = raw_doc()
    assert doc["_id"] == job.id
    assert doc["organization"] == "acme"
    assert doc["data"] == {"to": "a@example.com"}
    assert queue.get_job(job.id).organization == "acme"
    assert queue.get_job(str(job.id)).id == job.id


def test_enqueue_defaults(queue: Any) -> None:
    job = queue.enqueue("t")
    doc = raw_doc()
    assert job.status == "pending"
    assert doc["status"] == "pending"
    assert doc["attempts"] == 0
    assert doc["max_retries"] == 3
    assert doc["priority"] == 0
    assert doc["queue"] == "default"
    assert doc["data"] == {}
    assert doc["run_at"] == START
    assert doc["created_at"] == START
    assert doc["updated_at"] == START
    for absent in ("lease_token", "lease_owner", "lease_expires_at", "last_error", "result", "started_at"):
        assert absent not in doc


def test_empty_library_containers_are_not_stored(queue: Any) -> None:
    # Each costs every read and write of the job (332 BSON bytes before, 234 after, for a small job);
    # the loaded job still shows them empty, and the first $push or $set creates them.
    job = queue.enqueue("t", {"n": 1}, organization="acme")
    doc = raw_doc()
    for absent in ("errors", "headers", "admin_marks", "progress", "rate_slots", "batch_callback", "depends_on"):
        assert absent not in doc
    assert doc["data"] == {"n": 1}
    loaded = queue.get_job(job.id)
    assert (loaded.errors, loaded.headers, loaded.admin_marks, loaded.progress) == ([], {}, [], {})
    assert len(bson.encode(doc)) < 260


def test_max_retries_precedence(make_queue: Any) -> None:
    queue = make_queue(max_retries=5)
    queue.register_handler("with_default", print, max_retries=1)
    queue.register_handler("without_default", print)
    assert queue.enqueue("unregistered").max_retries == 5
    assert queue.enqueue("without_default").max_retries == 5
    assert queue.enqueue("with_default").max_retries == 1
    assert queue.enqueue("with_default", max_retries=7).max_retries == 7
    assert queue.enqueue("with_default", max_retries=0).max_retries == 0
    assert [d["max_retries"] for d in raw_docs()] == [5, 5, 1, 7, 0]


def test_priority_and_queue_are_stored(queue: Any) -> None:
    queue.enqueue("t", priority=-5, queue="low")
    doc = raw_doc()
    assert (doc["priority"], doc["queue"]) == (-5, "low")


def test_delay_ms_sets_run_at(queue: Any) -> None:
    job = queue.enqueue("t", delay_ms=1_500)
    assert job.run_at == START + timedelta(milliseconds=1_500)
    assert raw_doc()["run_at"] == START + timedelta(milliseconds=1_500)


def test_aware_run_at_is_stored_as_naive_utc(queue: Any) -> None:
    plus_two = timezone(timedelta(hours=2))
    job = queue.enqueue("t", run_at=datetime(2024, 1, 1, 15, 30, tzinfo=plus_two))
    assert job.run_at == datetime(2024, 1, 1, 13, 30)
    stored = raw_doc()["run_at"]
    assert stored == datetime(2024, 1, 1, 13, 30)
    assert stored.tzinfo is None


def test_naive_run_at_is_taken_as_utc(queue: Any) -> None:
    queue.enqueue("t", run_at=datetime(2030, 5, 6, 7, 8, 9))
    assert raw_doc()["run_at"] == datetime(2030, 5, 6, 7, 8, 9)


def test_run_at_and_delay_ms_together_are_rejected(unchanged: Any, queue: Any) -> None:
    unchanged(queue.enqueue, "t", run_at=START, delay_ms=5, match="run_at or delay_ms")


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"$set": 1}, "data has key '$set'"),
        ({"a": {"b": {"$gt": 1}}}, "data.a.b has key '$gt'"),
        ({"a": [{"ok": 1}, {"$where": "x"}]}, "data.a[1] has key '$where'"),
        ({"a.b": 1}, "data has key 'a.b' containing '.'"),
        ({"a": {"b.c": 1}}, "data.a has key 'b.c'"),
        ({1: "x"}, "data has a non-string key 1"),
        ({"a": {(1, 2): "x"}}, "data.a has a non-string key (1, 2)"),
        ({"a\x00b": 1}, "NUL"),
    ],
)
def test_bad_keys_are_rejected(unchanged: Any, queue: Any, data: Any, path: str) -> None:
    unchanged(queue.enqueue, "t", data, match=path)


@pytest.mark.parametrize("value", [object(), {1, 2}, frozenset({"a"})], ids=["object", "set", "frozenset"])
def test_non_bson_values_are_rejected(unchanged: Any, queue: Any, value: Any) -> None:
    unchanged(queue.enqueue, "t", {"value": value})


def test_non_bson_value_deep_in_a_list_is_rejected(unchanged: Any, queue: Any) -> None:
    unchanged(queue.enqueue, "t", {"a": [1, {"b": object()}]}, match="not BSON-encodable")


def test_payload_over_16_mb_is_rejected(unchanged: Any, queue: Any) -> None:
    message = unchanged(queue.enqueue, "t", {"blob": "x" * (17 * 1024 * 1024)})
    assert "bytes" in message
    assert "limit" in message


def test_payload_just_under_the_limit_is_accepted(queue: Any) -> None:
    # The limit keeps room for a result and the error history (QueueConfig.max_job_bytes, ~14.5 MiB).
    queue.enqueue("t", {"blob": "x" * (queue.config.max_job_bytes - 1024)})
    assert _count() == 1


def _nested(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        data = {"n": data}
    return data


def test_nesting_deeper_than_100_levels_is_rejected(unchanged: Any, queue: Any) -> None:
    unchanged(queue.enqueue, "t", _nested(120), match="nested deeper")


def test_moderate_nesting_is_accepted(queue: Any) -> None:
    queue.enqueue("t", _nested(50))
    assert _count() == 1


@pytest.mark.parametrize("data", [[1, 2], "text", 5, (("a", 1),)])
def test_data_must_be_a_dict(unchanged: Any, queue: Any, data: Any) -> None:
    unchanged(queue.enqueue, "t", data, match="data must be a dict")


@pytest.mark.parametrize("job_type", ["", None, 3, b"t"])
def test_job_type_must_be_a_non_empty_str(unchanged: Any, queue: Any, job_type: Any) -> None:
    unchanged(queue.enqueue, job_type, match="job_type")


def test_overlong_job_type_is_rejected(unchanged: Any, queue: Any) -> None:
    unchanged(queue.enqueue, "t" * 201)


@pytest.mark.parametrize("priority", [True, "1", 1.0, 2**31])
def test_bad_priority_is_rejected(unchanged: Any, queue: Any, priority: Any) -> None:
    unchanged(queue.enqueue, "t", priority=priority, match="priority")


@pytest.mark.parametrize("queue_name", ["", None, 1])
def test_bad_queue_name_is_rejected(unchanged: Any, queue: Any, queue_name: Any) -> None:
    unchanged(queue.enqueue, "t", queue=queue_name, match="queue must be")


@pytest.mark.parametrize("delay_ms", [-1, 1.5, "10", True])
def test_bad_delay_ms_is_rejected(unchanged: Any, queue: Any, delay_ms: Any) -> None:
    unchanged(queue.enqueue, "t", delay_ms=delay_ms, match="delay_ms")


@pytest.mark.parametrize("run_at", ["2024-01-01", 1_700_000_000, START.date()])
def test_non_datetime_run_at_is_rejected(unchanged: Any, queue: Any, run_at: Any) -> None:
    unchanged(queue.enqueue, "t", run_at=run_at, match="run_at must be a datetime")


@pytest.mark.parametrize("max_retries", [-1, True, "2"])
def test_bad_max_retries_is_rejected(unchanged: Any, queue: Any, max_retries: Any) -> None:
    unchanged(queue.enqueue, "t", max_retries=max_retries, match="max_retries")


def test_unknown_extra_field_is_rejected(unchanged: Any, queue: Any) -> None:
    message = unchanged(queue.enqueue, "t", organisation="typo")
    assert "organisation" in message


@pytest.mark.parametrize("field", ["status", "attempts", "lease_token", "result", "type"])
def test_extra_field_cannot_set_library_fields(unchanged: Any, queue: Any, field: str) -> None:
    message = unchanged(queue.enqueue, "t", **{field: "completed"})
    assert field in message
    assert "managed by the queue" in message


@pytest.mark.parametrize("name", ["id", "pk", "_id"])
@pytest.mark.parametrize("value", [ObjectId("0123456789abcdef01234567"), "0123456789abcdef01234567", 5])
def test_enqueue_cannot_set_the_job_id(unchanged: Any, queue: Any, name: str, value: Any) -> None:
    # The id used to be taken by the model, then replaced by a new one: the job got another id, silently.
    message = unchanged(queue.enqueue, "t", {}, organization="a", **{name: value})
    assert f"field(s) {name} are managed by the queue" in message
    assert "the queue chooses the job's id" in message


@pytest.mark.parametrize("name", ["id", "pk", "_id"])
def test_enqueue_many_and_graphs_cannot_set_the_job_id(unchanged: Any, queue: Any, name: str) -> None:
    wanted = ObjectId("0123456789abcdef01234567")
    message = unchanged(queue.enqueue_many, [{"job_type": "a"}, {"job_type": "b", name: wanted}])
    assert message.startswith(f"jobs[1]: field(s) {name} are managed by the queue")
    spec = queue.job("b", {}, **{name: wanted})
    message = unchanged(queue.enqueue_graph, chain(queue.job("a", {}), spec))
    assert f"field(s) {name} are managed by the queue" in message


def test_extra_field_failing_model_validation_is_rejected(unchanged: Any, queue: Any) -> None:
    message = unchanged(queue.enqueue, "t", organization=12345)
    assert "organization" in message
    message = unchanged(queue.enqueue, "t", organization="x" * 51)
    assert "organization" in message


def test_required_app_field_missing_is_rejected(make_queue: Any) -> None:
    queue = make_queue(TenantJob)
    with pytest.raises(InvalidJobError, match="tenant"):
        queue.enqueue("t")
    assert _count(TenantJob) == 0
    assert queue.enqueue("t", tenant="t1").tenant == "t1"
    assert _count(TenantJob) == 1


def test_the_model_refusal_names_each_field_in_plain_words(make_queue: Any, unchanged: Any, queue: Any) -> None:
    tenant_queue = make_queue(TenantJob)
    with pytest.raises(InvalidJobError) as info:
        tenant_queue.enqueue("t")
    assert str(info.value) == "job is missing required field 'tenant' of TenantJob"
    assert isinstance(info.value.__cause__, ValidationError)  # MongoEngine's error stays reachable
    message = unchanged(queue.enqueue, "t", organization="x" * 51)
    assert message == "field 'organization' of OrgJob is invalid: String value is too long"
    assert unchanged(queue.enqueue, "t", organisation="typo") == "OrgJob has no field 'organisation'"


# -- one check of what is written ---------------------------------------------


class Trace(Middleware):
    """Adds a header, as a tracing middleware does, and records the aborted enqueues."""

    def __init__(self, header: Any = "t") -> None:
        self.header = header
        self.aborted: list[str] = []

    def before_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        doc["headers"] = {"trace": self.header}

    def on_enqueue_aborted(self, queue: Any, doc: dict[str, Any], *, exc: Any) -> None:
        self.aborted.append(type(exc).__name__)


def test_each_job_is_encoded_once_whether_hooks_change_it_or_not(queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    real_encode = bson.encode

    def encode(doc: Any, *args: Any, **kwargs: Any) -> bytes:
        if isinstance(doc, dict) and "type" in doc:  # a job document, not a query or a result
            encoded.append(doc["type"])
        return real_encode(doc, *args, **kwargs)

    # The library's encodings (mongomock encodes each insert once more, as the driver does).
    monkeypatch.setattr(validation, "bson", SimpleNamespace(encode=encode))
    queue.enqueue("plain")
    queue.enqueue_many([{"job_type": "bulk"}, {"job_type": "bulk"}])
    queue.add_middleware(Trace())
    queue.enqueue("traced")
    queue.enqueue_many([{"job_type": "traced-bulk"}])
    assert encoded == ["plain", "bulk", "bulk", "traced", "traced-bulk"]
    assert [d.get("headers") for d in raw_docs()][-2:] == [{"trace": "t"}, {"trace": "t"}]  # checked, then stored


def test_what_the_hooks_add_is_checked_with_the_job(unchanged: Any, queue: Any) -> None:
    trace = Trace(header=object())
    queue.add_middleware(trace)
    unchanged(queue.enqueue, "t", match="job is not BSON-encodable")
    message = unchanged(queue.enqueue_many, [{"job_type": "a"}, {"job_type": "b"}])
    assert message.startswith("jobs[0]: job is not BSON-encodable")
    assert trace.aborted == ["InvalidJobError"] * 3  # every announced job is closed


class Corrupt(Middleware):
    """A before_enqueue hook that changes the job into one the queue cannot run."""

    def __init__(self, change: Callable[[dict[str, Any]], None]) -> None:
        self.change = change
        self.aborted: list[str] = []

    def before_enqueue(self, queue: Any, doc: dict[str, Any]) -> None:
        self.change(doc)

    def on_enqueue_aborted(self, queue: Any, doc: dict[str, Any], *, exc: Any) -> None:
        self.aborted.append(type(exc).__name__)


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc.update(status="bogus"),
        lambda doc: doc.update(priority="high"),
        lambda doc: doc.update(run_at="tomorrow"),
        lambda doc: doc.pop("run_at"),
        lambda doc: doc.update(attempts=-5),
        lambda doc: doc.update(type=5),
        lambda doc: doc.update(data=[1, 2]),
        lambda doc: doc["data"].update({"$bad": 1}),
        lambda doc: doc["data"].update({"_cls": "Nope"}),
        lambda doc: doc.update(not_a_field_of_the_model=1),
        lambda doc: doc.update(organization=["not", "a", "string"]),
    ],
    ids=[
        "status",
        "priority",
        "run_at",
        "no-run_at",
        "attempts",
        "type",
        "data-list",
        "dollar",
        "cls",
        "unknown",
        "app",
    ],
)
def test_a_hook_cannot_store_a_job_the_worker_could_not_run(unchanged: Any, queue: Any, change: Any) -> None:
    """What a before_enqueue hook changed is checked as the worker will load it; nothing is written.

    Only the encoding and the size were checked after the hooks: every one of
    these was stored, and an unknown field raised FieldDoesNotExist after the insert.
    """
    corrupt = Corrupt(change)
    queue.add_middleware(corrupt)
    unchanged(queue.enqueue, "t", {"n": 1}, organization="acme", match="a before_enqueue middleware left the job")
    message = unchanged(queue.enqueue_many, [{"job_type": "a"}])
    assert message.startswith("jobs[0]: a before_enqueue middleware left the job")
    assert corrupt.aborted == ["InvalidJobError"] * 2


def test_an_app_field_holding_an_odm_reserved_key_is_refused(unchanged: Any, queue: Any) -> None:
    """A ``_cls`` key inside an app's field made a stored job that MongoEngine cannot load (NotRegistered)."""
    unchanged(queue.enqueue, "t", {}, organization="acme", tags={"_cls": "Nope"}, match="'_cls'")


# -- enqueue_many ------------------------------------------------------------


def test_enqueue_many_inserts_all_in_one_call(queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collection = OrgJob._get_collection()
    calls: list[int] = []
    real_insert_many = collection.insert_many

    def insert_many(docs: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(docs))
        return real_insert_many(docs, *args, **kwargs)

    monkeypatch.setattr(collection, "insert_many", insert_many)
    monkeypatch.setattr(collection, "insert_one", None)  # must not be used

    jobs = queue.enqueue_many(
        [
            {"job_type": "a", "data": {"i": 0}, "organization": "o0"},
            {"job_type": "b", "data": {"i": 1}, "priority": 3, "queue": "q"},
            {"job_type": "c", "delay_ms": 10, "max_retries": 0},
        ]
    )
    assert calls == [3]
    assert [j.type for j in jobs] == ["a", "b", "c"]
    assert all(isinstance(j, OrgJob) and isinstance(j.id, ObjectId) for j in jobs)
    assert jobs[0].organization == "o0"
    docs = {d["_id"]: d for d in raw_docs()}
    assert [docs[j.id]["data"] for j in jobs] == [{"i": 0}, {"i": 1}, {}]
    assert docs[jobs[1].id]["priority"] == 3
    assert docs[jobs[1].id]["queue"] == "q"
    assert docs[jobs[2].id]["run_at"] == START + timedelta(milliseconds=10)
    assert docs[jobs[2].id]["max_retries"] == 0
    assert docs[jobs[0].id]["organization"] == "o0"


def test_enqueue_many_accepts_a_generator_and_empty_input(queue: Any) -> None:
    assert queue.enqueue_many([]) == []
    jobs = queue.enqueue_many({"job_type": f"t{i}"} for i in range(4))
    assert [j.type for j in jobs] == ["t0", "t1", "t2", "t3"]
    assert _count() == 4


def test_enqueue_many_one_bad_job_inserts_nothing(unchanged: Any, queue: Any) -> None:
    jobs = [{"job_type": "a"}, {"job_type": "b"}, {"job_type": "c", "data": {"$bad": 1}}, {"job_type": "d"}]
    message = unchanged(queue.enqueue_many, jobs)
    assert message.startswith("jobs[2]")
    assert "'$bad'" in message


def test_enqueue_many_bad_extra_field_names_the_index(unchanged: Any, queue: Any) -> None:
    message = unchanged(queue.enqueue_many, [{"job_type": "a"}, {"job_type": "b", "status": "completed"}])
    assert message.startswith("jobs[1]")
    assert "status" in message


def test_enqueue_many_missing_job_type(unchanged: Any, queue: Any) -> None:
    unchanged(queue.enqueue_many, [{"job_type": "a"}, {"data": {}}], match="jobs[1] has no 'job_type'")


@pytest.mark.parametrize("item", [["job_type", "a"], "a", None])
def test_enqueue_many_non_mapping_item(unchanged: Any, queue: Any, item: Any) -> None:
    unchanged(queue.enqueue_many, [{"job_type": "a"}, item], match="jobs[1] must be a mapping")


def test_unique_index_violation_on_enqueue_writes_nothing(make_queue: Any) -> None:
    queue = make_queue(RefJob)  # no ensure_indexes(): the first enqueue creates the app's unique index
    queue.enqueue("t", ref="r1")
    with pytest.raises(InvalidJobError, match="unique index of RefJob"):
        queue.enqueue("t", ref="r1")
    assert [d["ref"] for d in raw_docs(RefJob)] == ["r1"]


def test_enqueue_many_rejected_by_the_server_leaves_nothing_behind(make_queue: Any) -> None:
    queue = make_queue(RefJob)  # no ensure_indexes(): the first enqueue creates the app's unique index
    queue.enqueue("t", ref="taken")
    jobs = [{"job_type": "t", "ref": ref} for ref in ("a", "b", "taken", "c")]
    with pytest.raises(InvalidJobError) as info:
        queue.enqueue_many(jobs)
    message = str(info.value)
    assert message.startswith("jobs[2] rejected by the server")
    assert "2 job(s) of the batch removed again" in message
    assert [d["ref"] for d in raw_docs(RefJob)] == ["taken"]
