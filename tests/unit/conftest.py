"""Fixtures of the unit suite: a mongomock connection, app job models, a fake clock and queues.

Everything here is single-process and sequential: mongomock is not safe for
concurrent use, so tests drive the queue with ``run_once()``/``drain()`` and
call the store and worker methods directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import mongoengine
import mongomock
import pytest
from mongoengine import DictField, IntField, StringField

from mongo_job_queue import BaseJob, PersistentJobQueue, create_job_queue

ALIAS = "mjq_unit"
NO_RETENTION = {"retention_completed_ms": None, "retention_failed_ms": None, "retention_cancelled_ms": None}
START = datetime(2024, 1, 1, 12, 0, 0)


class OrgJob(BaseJob):
    """The main app model: one extra field and an index of its own."""

    organization = StringField(max_length=50)
    tags = DictField()
    meta = {
        "collection": "unit_org_jobs",
        "db_alias": ALIAS,
        "indexes": [{"name": "app_org", "fields": ["organization", "-created_at"]}],
    }


class OtherJob(BaseJob):
    """A second app model in another collection of the same process."""

    weight = IntField()
    meta = {"collection": "unit_other_jobs", "db_alias": ALIAS}


class TenantJob(BaseJob):
    """An app model with a required field of its own."""

    tenant = StringField(required=True)
    meta = {"collection": "unit_tenant_jobs", "db_alias": ALIAS}


class RefJob(BaseJob):
    """An app model with a unique index of its own, which only the server can enforce."""

    ref = StringField(unique=True, sparse=True)
    meta = {"collection": "unit_ref_jobs", "db_alias": ALIAS}


MODELS: tuple[type[BaseJob], ...] = (OrgJob, OtherJob, TenantJob, RefJob)


class FakeClock:
    """A callable clock returning naive UTC datetimes that only moves when told to."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, *, ms: int = 0, seconds: float = 0) -> datetime:
        self.now += timedelta(milliseconds=ms, seconds=seconds)
        return self.now


@pytest.fixture(scope="session", autouse=True)
def _connection() -> Iterator[None]:
    mongoengine.connect(
        db="mjq_unit_db",
        alias=ALIAS,
        host="mongodb://localhost",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )
    yield
    mongoengine.disconnect(alias=ALIAS)


def _drop_all() -> None:
    for model in MODELS:
        model.drop_collection()
        # The control collection beside it: pause and schedule state.
        model._get_db().drop_collection(f"{model._get_collection_name()}_control")
        for suffix in ("_limits", "_limiters"):  # limit definitions and limiter documents
            model._get_db().drop_collection(f"{model._get_collection_name()}{suffix}")


@pytest.fixture(autouse=True)
def _clean_collections() -> Iterator[None]:
    _drop_all()
    yield
    _drop_all()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> list[float]:
    """Records the store's retry sleeps instead of sleeping."""
    return []


@pytest.fixture
def make_queue(clock: FakeClock, sleeps: list[float]) -> Callable[..., PersistentJobQueue[Any]]:
    """Build a queue on a model (OrgJob by default) with the fake clock and recorded sleeps."""

    def make(model: type[BaseJob] = OrgJob, **config: Any) -> PersistentJobQueue[Any]:
        # The fake clock is the truth here; no correction towards the server's.
        # mongomock emulates TTL indexes on every read by the real clock, so
        # retention would delete jobs finished at the fake clock's 2024 date.
        config = {"sync_clock": False, **NO_RETENTION, **config}
        return create_job_queue(job_model=model, config=config, clock=clock, sleep=sleeps.append)

    return make


@pytest.fixture
def queue(make_queue: Callable[..., PersistentJobQueue[Any]]) -> PersistentJobQueue[Any]:
    return make_queue()


def raw_docs(model: type[BaseJob] = OrgJob) -> list[dict[str, Any]]:
    """Every stored document of ``model``'s collection, oldest first."""
    return list(model._get_collection().find({}, sort=[("_id", 1)]))


def raw_doc(model: type[BaseJob] = OrgJob) -> dict[str, Any]:
    docs = raw_docs(model)
    assert len(docs) == 1, docs
    return docs[0]


@pytest.fixture
def mongomock_bulk_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``bulk_write`` of UpdateOne operations one by one.

    mongomock 4.3 cannot build bulks from the UpdateOne objects of recent
    pymongo releases (it rejects their ``sort`` argument), so
    ``JobStore.renew_leases`` would fail on it before reaching any library code.
    """

    def bulk_write(self: Any, requests: Any, ordered: bool = True, **kwargs: Any) -> SimpleNamespace:
        matched = modified = 0
        for op in requests:
            result = self.update_one(op._filter, op._doc)
            matched += result.matched_count
            modified += result.modified_count
        return SimpleNamespace(matched_count=matched, modified_count=modified)

    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", bulk_write)
