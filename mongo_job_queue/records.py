"""Plain records passed between the store and the worker: what a claim returned, what a handler gave back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId

__all__ = ["ClaimedJob", "UnstorableResult", "completion_fields"]


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
