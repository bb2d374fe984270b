"""The abstract BaseJob: inherited indexes, independent subclasses and model injection checks."""

from __future__ import annotations

from typing import Any

import mongoengine
import pytest
from conftest import ALIAS, OrgJob, OtherJob, raw_docs

from mongo_job_queue import BaseJob, JobModelError, JobStatus, create_job_queue
from mongo_job_queue.model import LIBRARY_FIELDS


class PlainDocument(mongoengine.Document):
    meta = {"collection": "unit_plain_documents", "db_alias": ALIAS}


class AbstractAppJob(BaseJob):
    meta = {"abstract": True}


def _specs_by_name(model: type[BaseJob]) -> dict[str, Any]:
    return {spec.get("name"): spec["fields"] for spec in model._meta["index_specs"]}


def test_base_job_is_abstract() -> None:
    assert BaseJob._meta["abstract"] is True
    assert not hasattr(BaseJob, "objects")
    with pytest.raises(mongoengine.errors.InvalidDocumentError, match="abstract"):
        BaseJob(type="t").save()


def test_claim_and_lease_indexes_are_inherited_and_merged() -> None:
    specs = _specs_by_name(OrgJob)
    assert specs["mjq_claim"] == [("status", 1), ("queue", 1), ("type", 1), ("priority", -1), ("run_at", 1)]
    assert specs["mjq_lease"] == [("status", 1), ("lease_expires_at", 1)]
    assert specs["app_org"] == [("organization", 1), ("created_at", -1)]
    assert specs["mjq_schedule"] == [("schedule", 1), ("fire_time", 1)]
    assert specs["mjq_dependents"] == [("depends_on", 1)]  # partial: blocked jobs only
    assert specs["mjq_blocked"] == [("status", 1), ("_id", 1)]
    assert specs["mjq_batch"] == [("batch_id", 1), ("status", 1)]
    assert specs["mjq_due"] == [("queue", 1), ("type", 1), ("run_at", 1)]  # partial: pending jobs only
    assert len(specs) == 9


def test_subclass_without_indexes_still_gets_the_library_ones() -> None:
    assert set(_specs_by_name(OtherJob)) == {
        "mjq_claim", "mjq_due", "mjq_lease", "mjq_unique", "mjq_schedule", "mjq_dependents", "mjq_blocked",
        "mjq_batch",
    }  # fmt: skip


def test_ensure_indexes_creates_them_in_the_collection(queue: Any) -> None:
    queue.ensure_indexes()
    info = OrgJob._get_collection().index_information()
    assert info["mjq_claim"]["key"] == [("status", 1), ("queue", 1), ("type", 1), ("priority", -1), ("run_at", 1)]
    assert info["mjq_lease"]["key"] == [("status", 1), ("lease_expires_at", 1)]
    assert info["app_org"]["key"] == [("organization", 1), ("created_at", -1)]


def test_two_models_in_one_process_are_independent(make_queue: Any) -> None:
    org_queue = make_queue(OrgJob)
    other_queue = make_queue(OtherJob)
    seen: list[tuple[str, Any]] = []
    org_queue.register_handler("work", lambda job: seen.append(("org", job.organization)))
    other_queue.register_handler("work", lambda job: seen.append(("other", job.weight)))

    org_queue.enqueue("work", organization="acme")
    org_queue.enqueue("work", organization="globex")
    other_queue.enqueue("work", weight=3)

    assert len(raw_docs(OrgJob)) == 2
    assert len(raw_docs(OtherJob)) == 1
    assert org_queue.counts()["pending"] == 2
    assert other_queue.counts()["pending"] == 1

    assert other_queue.drain() == 1
    assert seen == [("other", 3)]
    assert org_queue.counts()["pending"] == 2  # untouched by the other queue's drain
    assert org_queue.drain() == 2
    assert sorted(seen) == [("org", "acme"), ("org", "globex"), ("other", 3)]
    assert [d["status"] for d in raw_docs(OrgJob)] == ["completed", "completed"]
    assert [d["status"] for d in raw_docs(OtherJob)] == ["completed"]


@pytest.mark.parametrize(
    "bad",
    [PlainDocument, OrgJob(organization="x"), BaseJob, AbstractAppJob, dict, "OrgJob", None],
    ids=["non-BaseJob class", "instance", "BaseJob itself", "abstract subclass", "dict", "str", "None"],
)
def test_create_job_queue_rejects_bad_models(bad: Any) -> None:
    with pytest.raises(JobModelError):
        create_job_queue(job_model=bad)


def test_abstract_model_error_names_the_class() -> None:
    with pytest.raises(JobModelError, match="AbstractAppJob is abstract"):
        create_job_queue(job_model=AbstractAppJob)


def test_job_model_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        create_job_queue(job_model=PlainDocument)


def test_job_status_values() -> None:
    assert [s.value for s in JobStatus] == ["pending", "processing", "completed", "failed", "cancelled", "blocked"]
    assert JobStatus.PENDING == "pending"
    assert str(JobStatus.FAILED) == "failed"


def test_library_fields_exclude_id_and_app_fields() -> None:
    assert "id" not in LIBRARY_FIELDS
    assert "organization" not in LIBRARY_FIELDS
    assert {"status", "attempts", "lease_token", "type", "data", "errors", "result"} <= LIBRARY_FIELDS
