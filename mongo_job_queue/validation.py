"""What a storable job document is: the rules checked before a write, and after a read.

Before a write (:func:`check_payload`, :func:`check_document`,
:func:`check_value`): bad input raises
:class:`~mongo_job_queue.errors.InvalidJobError` and leaves the database as it
was. MongoDB would reject some of it itself, but only after part of a bulk
insert went through, and with a message that does not name the job. The
enqueue path (:mod:`.enqueue`) runs each of these once per job.

After a read (:func:`stored_job_problems`): a document edited by hand is
failed with the reasons by the worker, instead of crashing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import bson
from bson import ObjectId
from bson.errors import BSONError, InvalidDocument

from .config import BSON_MAX_BYTES, QueueConfig
from .errors import InvalidJobError
from .status import ALL_STATUSES, BLOCKED

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING_DEPTH",
    "ODM_RESERVED_KEYS",
    "check_document",
    "check_payload",
    "check_value",
    "dependency_problems",
    "stored_job_problems",
]

_STATUSES = frozenset(ALL_STATUSES)

#: MongoDB's document size limit.
MAX_DOCUMENT_BYTES = BSON_MAX_BYTES
#: Headroom kept by default for fields the queue adds later (result, error
#: history, lease): :attr:`QueueConfig.reserved_bytes` of the default config.
DOCUMENT_HEADROOM_BYTES = QueueConfig().reserved_bytes
#: Keys that MongoEngine interprets inside a stored dict (at any depth) instead of
#: returning them: a job holding one could never be loaded for its handler.
ODM_RESERVED_KEYS = {"_cls": "document class name", "_ref": "document reference"}
#: MongoDB refuses documents nested deeper than 100 levels.
MAX_NESTING_DEPTH = 100


def check_payload(data: Any, *, what: str = "data") -> None:
    """Reject keys MongoDB cannot store and nesting it refuses, naming the path."""
    if not isinstance(data, Mapping):
        raise InvalidJobError(f"{what} must be a dict, got {type(data).__name__}")
    _walk(data, what, 1)


def check_nested(value: Any, *, what: str) -> None:
    """Reject keys MongoDB cannot store (or MongoEngine misreads) anywhere inside ``value``, naming the path."""
    _walk(value, what, 1)


def check_value(value: Any, *, what: str) -> int:
    """Check any value (e.g. a handler's result) as the field ``what`` of a job document; return its encoded size.

    The size is that of ``{what: value}``, from the one encoding that proves
    the value storable, so a caller bounding it (``max_result_bytes``) need
    not encode it again.
    """
    _walk(value, what, 1)
    return check_document({what: value})


def _walk(value: Any, path: str, depth: int) -> None:
    if depth > MAX_NESTING_DEPTH - 2:  # the job document and 'data' take two levels
        raise InvalidJobError(f"{path} is nested deeper than MongoDB's limit of {MAX_NESTING_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidJobError(f"{path} has a non-string key {key!r}: BSON keys must be str")
            if key.startswith("$"):
                raise InvalidJobError(f"{path} has key {key!r} starting with '$', which MongoDB reserves for operators")
            if "." in key:
                raise InvalidJobError(f"{path} has key {key!r} containing '.', which MongoDB reads as a path")
            if "\x00" in key:
                raise InvalidJobError(f"{path} has a key containing a NUL character")
            if key in ODM_RESERVED_KEYS:
                raise InvalidJobError(
                    f"{path} has key {key!r}, which MongoEngine reads as a "
                    f"{ODM_RESERVED_KEYS[key]} when it loads the job: rename it"
                )
            _walk(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, (set, frozenset)):
        # MongoEngine would quietly turn it into a list; say so instead.
        raise InvalidJobError(f"{path} is a {type(value).__name__}, which BSON cannot store: use a list")


def check_document(son: Mapping[str, Any], *, limit: int | None = None) -> int:
    """Encode the whole job document once; return its size in bytes.

    Args:
        limit: Largest size accepted, :attr:`QueueConfig.max_job_bytes` of the
            queue's config (by default that of the default config), so that
            the job can still take its result and error history.

    Raises:
        InvalidJobError: the document is not BSON-encodable or is too large.
    """
    limit = MAX_DOCUMENT_BYTES - DOCUMENT_HEADROOM_BYTES if limit is None else limit
    try:
        size = len(bson.encode(son))
    except (InvalidDocument, BSONError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidJobError(f"job is not BSON-encodable: {exc}") from exc
    if size > limit:
        raise InvalidJobError(
            f"job document is {size} bytes; the limit is {limit} "
            f"(MongoDB's 16 MiB less {MAX_DOCUMENT_BYTES - limit} bytes kept for the result and error history, "
            "see max_result_bytes). Store large payloads elsewhere and enqueue a reference."
        )
    return size


def _is_int(value: Any) -> bool:
    """An integral BSON number: int32, int64, or a double holding a whole value.

    mongosh writes ``priority: 10`` as the double 10.0; it means 10. A
    Decimal128 is refused: Python's ``int()`` does not take it, so every
    later step would fail on it.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def stored_job_problems(doc: Mapping[str, Any]) -> list[str]:
    """What makes a stored job document unusable, e.g. after an edit by hand.

    The queue wrote every job itself, so any of these means someone else
    did; the job is failed with the reasons instead of crashing a worker.
    """
    problems = []
    status = doc.get("status")
    if status not in _STATUSES:
        problems.append(f"unknown status {status!r}")
    job_type = doc.get("type")
    if not isinstance(job_type, str) or not job_type:
        problems.append(f"'type' must be a non-empty string, found {job_type!r}")
    for name, check, expected in (
        ("queue", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
        ("run_at", lambda v: isinstance(v, datetime), "a date"),
        ("max_retries", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ):
        if not check(doc.get(name)):
            problems.append(f"{name!r} must be {expected}, found {doc.get(name)!r}")
    for name, check, expected in (
        ("attempts", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        ("priority", _is_int, "an integer"),
        ("time_limit_ms", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        ("data", lambda v: isinstance(v, Mapping), "a document"),
        ("errors", lambda v: isinstance(v, list), "an array"),
        ("last_error", lambda v: isinstance(v, Mapping), "a document"),
    ):
        if name in doc and doc[name] is not None and not check(doc[name]):
            problems.append(f"{name!r} must be {expected}, found {type(doc[name]).__name__} {doc[name]!r:.60}")
    return problems + dependency_problems(doc)


def dependency_problems(doc: Mapping[str, Any]) -> list[str]:
    """What makes a job's dependency fields unusable: a blocked job so damaged is never released.

    Only the fields a release reads (``store.dependencies``), so the release
    can judge a projected document too.
    """
    problems = []
    depends_on = doc.get("depends_on")
    if doc.get("status") == BLOCKED and not isinstance(depends_on, list):
        problems.append(f"'depends_on' of a blocked job must be an array, found {depends_on!r:.60}")
    elif depends_on is not None and not (
        isinstance(depends_on, list) and all(isinstance(i, ObjectId) for i in depends_on)
    ):
        problems.append(f"'depends_on' must be an array of job ids, found {depends_on!r:.60}")
    created = doc.get("created_at")
    if depends_on is not None and created is not None and not isinstance(created, datetime):
        problems.append(f"'created_at' of a dependent job must be a date, found {created!r:.60}")
    policies = doc.get("dependency_policies")
    if policies is not None and not isinstance(policies, Mapping):
        problems.append(f"'dependency_policies' must be a document, found {policies!r:.60}")
    outcomes = doc.get("dependency_outcomes")
    if outcomes is not None and not (
        isinstance(outcomes, Mapping) and all(isinstance(o, Mapping) and "status" in o for o in outcomes.values())
    ):
        problems.append(f"'dependency_outcomes' must be a document of outcomes, found {outcomes!r:.60}")
    return problems
