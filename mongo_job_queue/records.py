"""Plain records passed between the store and the worker: who holds a lease, what a claim returned, what failed."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId

__all__ = ["ClaimedJob", "ErrorRecord", "LeaseOwnerInfo", "UnstorableResult", "completion_fields", "job_log_extra"]


def job_log_extra(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra`` of every log line about a job, for structured (JSON) log formatters."""
    return {
        "job_id": str(doc.get("_id")),
        "job_type": doc.get("type"),
        "queue": doc.get("queue"),
        "attempt": doc.get("attempts"),
    }


@dataclass(frozen=True)
class LeaseOwnerInfo:
    """Identity written into ``lease_owner`` when this process claims a job."""

    host: str
    pid: int
    worker_id: str

    @classmethod
    def current(cls, worker_id: str | None = None) -> LeaseOwnerInfo:
        return cls(socket.gethostname(), os.getpid(), worker_id or uuid.uuid4().hex[:12])

    def as_doc(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "worker_id": self.worker_id}


@dataclass(frozen=True)
class ErrorRecord:
    """A failed attempt, already truncated, ready to be pushed into ``errors``."""

    type: str
    message: str
    traceback: str
    attempt: int
    at: datetime
    lease_token: str | None

    def as_doc(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "attempt": self.attempt,
            "at": self.at,
            "lease_token": self.lease_token,
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
