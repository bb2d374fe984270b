"""Plain records passed between the store and the worker: what a claim returned, what a handler gave back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

__all__ = ["ClaimedJob", "UnstorableResult", "completion_fields", "job_log_extra"]


def job_log_extra(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra`` of every log line about a job, for structured (JSON) log formatters."""
    return {
        "job_id": str(doc.get("_id")),
        "job_type": doc.get("type"),
        "queue": doc.get("queue"),
        "attempt": doc.get("attempts"),
    }


@dataclass(frozen=True)
class UnstorableResult:
    """Stands for a handler result that cannot be stored; the completion records ``reason`` instead."""

    reason: str


def completion_fields(result: Any) -> dict[str, Any]:
    """The ``$set`` fields a completion adds for the handler's ``result``."""
    if result is None:
        return {}
    if isinstance(result, UnstorableResult):
        return {"result_error": result.reason}
    return {"result": result}


@dataclass
class ClaimedJob:
    """A raw job document together with the lease that fences writes about it."""

    doc: dict[str, Any]
    token: str

    @property
    def id(self) -> ObjectId:
        return self.doc["_id"]  # type: ignore[no-any-return]
