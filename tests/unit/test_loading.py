"""The direct build of job instances (mongo_job_queue.loading) gives exactly what MongoEngine's ``_from_son`` gives.

Each test loads a document both ways and compares everything the instance
holds, then uses both instances as an app would (change tracking, to_mongo,
save, display methods), so a difference shows up as behaviour too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import mongoengine
import pytest
from bson import ObjectId
from conftest import ALIAS, OrgJob
from mongoengine import (
    BooleanField,
    DictField,
    EmbeddedDocument,
    EmbeddedDocumentField,
    EmbeddedDocumentListField,
    FloatField,
    IntField,
    ListField,
    ReferenceField,
    StringField,
    signals,
)

from mongo_job_queue import BaseJob, loading
from mongo_job_queue.loading import load_job, loads_directly

NOW = datetime(2024, 1, 1, 12, 0, 0, 123000)


class Address(EmbeddedDocument):
    street = StringField()
    number = IntField(default=1)


class Tenant(mongoengine.Document):
    name = StringField()
    meta = {"collection": "unit_loading_tenants", "db_alias": ALIAS}


class RichJob(BaseJob):
    """Every field kind an app adds: renamed, choices, defaults (callable, plain, nullable), embedded, references."""

    organization = StringField(db_field="org")
    level = StringField(choices=("low", "high"), default="low")
    score = FloatField(default=0.5)
    flag = BooleanField(null=True, default=True)
    labels = ListField(StringField())
    address = EmbeddedDocumentField(Address)
    addresses = EmbeddedDocumentListField(Address)
    settings = DictField()
    tenant = ReferenceField(Tenant)
    meta = {"collection": "unit_loading_rich", "db_alias": ALIAS}


def claimed(**extra: Any) -> dict[str, Any]:
    """A document as a claim returns it."""
    return {
        "_id": ObjectId(),
        "type": "send",
        "queue": "default",
        "status": "processing",
        "data": {"to": "a@example.com", "n": [1, 2]},
        "priority": 0,
        "run_at": NOW,
        "created_at": NOW,
        "updated_at": NOW,
        "attempts": 1,
        "max_retries": 3,
        "lease_token": "t1",
        "lease_expires_at": NOW,
        "started_at": NOW,
        "lease_owner": {"host": "h", "pid": 7, "worker_id": "w1"},
        **extra,
    }


RICH = claimed(
    org="acme",
    level="high",
    labels=["a", "b"],
    address={"street": "Main", "number": 3},
    addresses=[{"street": "A"}, {"street": "B", "number": 2}],
    settings={"x": {"y": 1}},
    tenant=ObjectId(),
    errors=[{"type": "E", "message": "m", "attempt": 1, "at": NOW, "lease_token": "t0"}],
    last_error={"type": "E", "message": "m", "attempt": 1, "at": NOW, "lease_token": "t0"},
    progress=None,
    flag=None,
)

DOCS = [
    pytest.param(OrgJob, claimed(organization="acme"), id="claimed"),
    pytest.param(OrgJob, {k: v for k, v in claimed().items() if k not in ("lease_owner", "started_at")}, id="pending"),
    pytest.param(RichJob, RICH, id="every-field-kind"),
]


def both(model: type[BaseJob], doc: dict[str, Any]) -> tuple[Any, Any]:
    """The instance by ``_from_son`` and by the direct build (the first load verifies; the second is direct)."""
    load_job(model, dict(doc))
    assert loads_directly(model)
    return model._from_son(dict(doc)), load_job(model, dict(doc))


@pytest.mark.parametrize(("model", "doc"), DOCS)
def test_the_direct_build_holds_what_from_son_holds(model: type[BaseJob], doc: dict[str, Any]) -> None:
    expected, built = both(model, doc)
    assert loading._state(built) == loading._state(expected)
    assert built.to_mongo() == expected.to_mongo()
    assert built._changed_fields == expected._changed_fields == []


@pytest.mark.parametrize(("model", "doc"), DOCS)
def test_both_instances_track_changes_alike(model: type[BaseJob], doc: dict[str, Any]) -> None:
    expected, built = both(model, doc)
    for job in (expected, built):
        job.data["to"] = "b@example.com"
        job.attempts = 2
        job.priority = 0  # unchanged: not marked
        if isinstance(job, RichJob):
            job.address.street = "Other"
            job.addresses[1].number = 9
            job.labels.append("c")
    assert sorted(built._changed_fields) == sorted(expected._changed_fields)
    assert built._get_changed_fields() == expected._get_changed_fields()
    assert built._delta() == expected._delta()


def test_choice_display_and_embedded_parents() -> None:
    expected, built = both(RichJob, RICH)
    assert built.get_level_display() == expected.get_level_display() == "high"
    assert built.address._instance._data is built._data
    assert built.lease_owner._instance._data is built._data
    assert all(a._instance._data is built._data for a in built.addresses)
    assert built.flag is None and expected.flag is None  # stored None on a nullable field stays None
    assert built.progress == expected.progress  # stored None elsewhere: the default, as _from_son
    assert built._data["tenant"] == expected._data["tenant"]  # not dereferenced: no such tenant is stored


def test_a_direct_build_saves_like_from_son() -> None:
    job = OrgJob(
        type="send", queue="default", data={"n": 1}, organization="acme", run_at=NOW, created_at=NOW, updated_at=NOW
    )
    job.max_retries = 3
    job.save()
    raw = OrgJob._get_collection().find_one({"_id": job.id})
    load_job(OrgJob, dict(raw))
    loaded = load_job(OrgJob, dict(raw))
    loaded.organization = "other"
    loaded.save()
    assert OrgJob._get_collection().find_one({"_id": job.id})["organization"] == "other"
    assert loaded._created is False


def test_an_undeclared_key_fails_as_from_son_does() -> None:
    doc = claimed(removed_field=1)
    with pytest.raises(mongoengine.FieldDoesNotExist) as direct:
        load_job(OrgJob, doc)
    with pytest.raises(mongoengine.FieldDoesNotExist) as slow:
        OrgJob._from_son(dict(doc))
    assert str(direct.value) == str(slow.value)


def test_a_bad_value_fails_as_from_son_does() -> None:
    load_job(OrgJob, claimed())  # verified
    with pytest.raises(mongoengine.errors.InvalidDocumentError) as direct:
        load_job(OrgJob, claimed(lease_owner="not a document"))
    with pytest.raises(mongoengine.errors.InvalidDocumentError) as slow:
        OrgJob._from_son(claimed(lease_owner="not a document"))
    assert str(direct.value) == str(slow.value)


class OwnInit(BaseJob):
    meta = {"collection": "unit_loading_own_init", "db_alias": ALIAS}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen = True


class Inherited(BaseJob):
    meta = {"collection": "unit_loading_inherited", "db_alias": ALIAS, "allow_inheritance": True}


class Loose(BaseJob):
    meta = {"collection": "unit_loading_loose", "db_alias": ALIAS, "strict": False}


@pytest.mark.parametrize("model", [OwnInit, Inherited, Loose])
def test_models_that_change_construction_take_from_son(model: type[BaseJob]) -> None:
    job = load_job(model, claimed())
    assert not loads_directly(model)
    assert loading._state(job) == loading._state(model._from_son(claimed() | {"_id": job.id}))
    if model is OwnInit:
        assert job.seen is True


def test_init_signal_receivers_get_their_signals() -> None:
    seen: list[Any] = []

    def receiver(sender: Any, document: Any, **_: Any) -> None:
        seen.append(document)

    load_job(OrgJob, claimed())
    signals.post_init.connect(receiver)
    try:
        job = load_job(OrgJob, claimed())
    finally:
        signals.post_init.disconnect(receiver)
    assert job in seen


def test_a_build_that_differs_turns_the_direct_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fresh(BaseJob):
        meta = {"collection": "unit_loading_fresh", "db_alias": ALIAS}

    original = loading._Plan.build

    def drifted(self: Any, son: Any) -> Any:
        obj = original(self, son)
        obj._data["priority"] = -1  # a MongoEngine release that builds documents another way
        return obj

    monkeypatch.setattr(loading._Plan, "build", drifted)
    first = load_job(Fresh, claimed())
    assert first.priority == 0
    assert not loads_directly(Fresh)
    assert load_job(Fresh, claimed()).priority == 0


def test_without_blinker_jobs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """MongoEngine does not require blinker; without it its signals have no ``receivers`` (failed before)."""

    class Fake:  # what mongoengine.signals defines without blinker: send, connect, ..., no receivers
        def send(self, *args: Any, **kwargs: Any) -> None:
            return None

    monkeypatch.setattr(signals, "signals_available", False)
    monkeypatch.setattr(signals, "pre_init", Fake())
    monkeypatch.setattr(signals, "post_init", Fake())
    doc = claimed(organization="acme")
    job = load_job(OrgJob, dict(doc))
    assert job.organization == "acme"
    assert loading._state(load_job(OrgJob, dict(doc))) == loading._state(OrgJob._from_son(dict(doc)))


class Lower(StringField):
    """An app field that normalises what is assigned."""

    def __set__(self, instance: Any, value: Any) -> None:
        super().__set__(instance, value.lower() if isinstance(value, str) else value)


class Normalising(BaseJob):
    email = Lower()
    when = mongoengine.ComplexDateTimeField()
    attachment = mongoengine.FileField()
    meta = {"collection": "unit_loading_normalising", "db_alias": ALIAS}


def test_fields_with_their_own_descriptors_take_from_son() -> None:
    """Their difference shows on some documents only: the first one verified the build before (failed before)."""
    load_job(Normalising, claimed(email="a@b.c", attachment=ObjectId()))
    assert not loads_directly(Normalising)
    later = claimed(email="Bob@Example.COM", when="2024,05,06,07,08,09,000010")
    job = load_job(Normalising, dict(later))
    assert job.email == "bob@example.com"
    assert loading._state(job) == loading._state(Normalising._from_son(dict(later)))


class Node(EmbeddedDocument):
    name = StringField()
    child = EmbeddedDocumentField("Node")


class TreeJob(BaseJob):
    tree = EmbeddedDocumentField(Node)
    meta = {"collection": "unit_loading_tree", "db_alias": ALIAS}


def test_an_embedded_document_holding_its_own_class_loads() -> None:
    """Its first load verified the inner node under the outer node's lock, taken again (hung before)."""
    import threading

    doc = claimed(tree={"name": "root", "child": {"name": "leaf", "child": {"name": "deeper"}}})
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(load_job(TreeJob, dict(doc))), daemon=True)
    thread.start()
    thread.join(10)
    assert out, "load_job hung"
    assert out[0].tree.child.child.name == "deeper"
    again = load_job(TreeJob, dict(doc))
    assert loads_directly(TreeJob)
    assert loading._state(again) == loading._state(TreeJob._from_son(dict(doc)))


def test_a_default_made_per_instance_does_not_turn_the_direct_build_off() -> None:
    import uuid

    class Stamped(BaseJob):
        ref = StringField(default=lambda: uuid.uuid4().hex)
        meta = {"collection": "unit_loading_stamped", "db_alias": ALIAS}

    first = load_job(Stamped, claimed())  # no ref stored: each build makes its own
    assert loads_directly(Stamped)
    second = load_job(Stamped, claimed())
    assert len(first.ref) == len(second.ref) == 32 and first.ref != second.ref


def test_a_direct_build_that_fails_on_the_first_document_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    class Brittle(BaseJob):
        meta = {"collection": "unit_loading_brittle", "db_alias": ALIAS}

    def broken(self: Any, son: Any) -> Any:
        raise RuntimeError("a MongoEngine release this build does not know")

    monkeypatch.setattr(loading._Plan, "build", broken)
    job = load_job(Brittle, claimed())  # _from_son's instance, not the build's error
    assert job.type == "send"
    assert not loads_directly(Brittle)
