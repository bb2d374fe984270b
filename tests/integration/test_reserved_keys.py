"""Keys MongoEngine interprets (``_cls``, ``_ref``) never reach a stored payload or result."""

from __future__ import annotations

from typing import Any

import pytest

from mongo_job_queue import InvalidJobError

pytestmark = pytest.mark.integration

PAYLOADS = [
    {"_cls": "IntegrationJob"},
    {"_ref": {"$id": 1}},
    {"order": {"_cls": "Order", "id": 3}},
    {"items": [{"sku": 1}, {"_ref": "x"}]},
]


@pytest.mark.parametrize("data", PAYLOADS)
def test_enqueue_refuses_reserved_keys_at_any_depth(make_queue, job_model, data: dict[str, Any]) -> None:
    queue = make_queue()
    with pytest.raises(InvalidJobError, match="MongoEngine reads as a"):
        queue.enqueue("T", data)
    with pytest.raises(InvalidJobError, match=r"jobs\[1\].*MongoEngine reads as a"):
        queue.enqueue_many([{"job_type": "T"}, {"job_type": "T", "data": data}])
    assert job_model.objects.count() == 0


@pytest.mark.parametrize("result", PAYLOADS)
def test_a_result_with_reserved_keys_is_dropped_with_the_reason(make_queue, result: dict[str, Any]) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: result)
    job = queue.enqueue("T", {})
    queue.run_once()
    done = queue.get_job(job.id)  # loads: the stored job holds nothing MongoEngine would interpret
    assert done.status == "completed" and done.result is None
    assert "MongoEngine reads as a" in done.result_error
