"""Validation helpers: check_payload names the offending path, check_document sizes and encodes."""

from __future__ import annotations

import re
from typing import Any

import bson
import pytest

from mongo_job_queue import InvalidJobError
from mongo_job_queue.validation import (
    DOCUMENT_HEADROOM_BYTES,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING_DEPTH,
    check_document,
    check_payload,
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": {"b": [{"$x": 1}]}}, "data.a.b[0] has key '$x' starting with '$'"),
        ({"a": {"b": [1, [2, {"c.d": 3}]]}}, "data.a.b[1][1] has key 'c.d' containing '.'"),
        ({"list": ({"ok": 1}, {5: "x"})}, "data.list[1] has a non-string key 5"),
        ({"a": {"k\x00": 1}}, "data.a has a key containing a NUL character"),
        ({"$top": 1}, "data has key '$top'"),
    ],
)
def test_check_payload_names_the_path(data: Any, message: str) -> None:
    with pytest.raises(InvalidJobError, match=re.escape(message)):
        check_payload(data)


def test_check_payload_uses_the_given_name() -> None:
    with pytest.raises(InvalidJobError, match=re.escape("payload.x has key '$y'")):
        check_payload({"x": {"$y": 1}}, what="payload")
    with pytest.raises(InvalidJobError, match="payload must be a dict, got list"):
        check_payload([], what="payload")


@pytest.mark.parametrize("data", [None, [], "x", 1, {1, 2}])
def test_check_payload_requires_a_mapping(data: Any) -> None:
    with pytest.raises(InvalidJobError, match=f"data must be a dict, got {type(data).__name__}"):
        check_payload(data)


def test_check_payload_accepts_valid_payloads() -> None:
    check_payload({})
    check_payload({"a": [1, {"b": "c"}], "d": {"e": None}, "dollar$inside": 1, "s": "$not-a-key"})


def _nested(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(levels):
        data = {"n": data}
    return data


def test_check_payload_depth_limit() -> None:
    check_payload(_nested(MAX_NESTING_DEPTH - 5))
    with pytest.raises(InvalidJobError, match=f"nested deeper than MongoDB's limit of {MAX_NESTING_DEPTH}") as info:
        check_payload(_nested(MAX_NESTING_DEPTH + 5))
    assert str(info.value).startswith("data.n.n.n")


def test_check_payload_depth_counts_lists() -> None:
    data: Any = 1
    for _ in range(MAX_NESTING_DEPTH + 5):
        data = [data]
    with pytest.raises(InvalidJobError, match=re.escape("data.l[0][0]")):
        check_payload({"l": data})


def test_check_document_returns_the_encoded_size() -> None:
    son = {"a": 1, "b": "text"}
    assert check_document(son) == len(bson.encode(son))


def test_check_document_rejects_unencodable_values() -> None:
    with pytest.raises(InvalidJobError, match="not BSON-encodable"):
        check_document({"a": object()})
    with pytest.raises(InvalidJobError, match="not BSON-encodable"):
        check_document({"a": 2**70})


def test_check_document_size_limit_keeps_headroom() -> None:
    limit = MAX_DOCUMENT_BYTES - DOCUMENT_HEADROOM_BYTES
    overhead = len(bson.encode({"blob": ""}))
    assert check_document({"blob": "x" * (limit - overhead)}) == limit
    with pytest.raises(InvalidJobError, match=f"is {limit + 1} bytes; the limit is {limit}"):
        check_document({"blob": "x" * (limit - overhead + 1)})


def _stored(**overrides: Any) -> dict[str, Any]:
    from datetime import datetime

    doc: dict[str, Any] = {
        "type": "t",
        "status": "pending",
        "queue": "default",
        "run_at": datetime(2030, 1, 1),
        "max_retries": 3,
        "attempts": 0,
        "priority": 0,
        "data": {},
        "errors": [],
    }
    doc.update(overrides)
    return doc


def test_stored_job_problems_accepts_what_the_queue_writes() -> None:
    from mongo_job_queue.validation import stored_job_problems

    assert stored_job_problems(_stored()) == []
    assert stored_job_problems({k: v for k, v in _stored().items() if k not in ("data", "errors", "priority")}) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"status": "paused"}, "unknown status 'paused'"),
        ({"type": ""}, "'type' must be a non-empty string"),
        ({"queue": 3}, "'queue' must be a non-empty string"),
        ({"run_at": "tomorrow"}, "'run_at' must be a date"),
        ({"max_retries": -1}, "'max_retries' must be an integer >= 0"),
        ({"max_retries": True}, "'max_retries' must be an integer >= 0"),
        ({"attempts": "2"}, "'attempts' must be an integer >= 0"),
        ({"priority": 1.5}, "'priority' must be an integer"),
        ({"data": [1]}, "'data' must be a document"),
        ({"errors": "x"}, "'errors' must be an array"),
        ({"last_error": "boom"}, "'last_error' must be a document"),
    ],
)
def test_stored_job_problems_names_each_damage(overrides: dict[str, Any], expected: str) -> None:
    from mongo_job_queue.validation import stored_job_problems

    problems = stored_job_problems(_stored(**overrides))
    assert len(problems) == 1
    assert expected in problems[0]
