"""Plain records passed between the store and the worker: who holds a lease, what a claim returned, what failed."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId

__all__ = ["ClaimedJob", "ErrorRecord", "LeaseOwnerInfo"]


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


@dataclass
class ClaimedJob:
    """A raw job document together with the lease that fences writes about it."""

    doc: dict[str, Any]
    token: str

    @property
    def id(self) -> ObjectId:
        return self.doc["_id"]  # type: ignore[no-any-return]
