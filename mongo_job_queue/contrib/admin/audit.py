"""The audit trail: every admin action (who, role, what, on what, how many jobs, when) in ``<jobs>_audit``."""

from __future__ import annotations

from typing import Any, Optional

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ...store.index_once import IndexOnce

__all__ = ["AuditLog"]

_MAX_TIME_MS = 5_000
#: Audit records are removed after this long (a TTL index on ``at``).
AUDIT_TTL_S = 400 * 24 * 3600
_indexes = IndexOnce()


class AuditLog:
    """Writes and pages through a queue's audit collection, given the queue's store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @property
    def collection(self) -> Any:
        return self.store.sibling("audit")

    def _create_index(self) -> None:
        self.collection.create_index([("at", -1)], name="mjq_audit_at", expireAfterSeconds=AUDIT_TTL_S)

    def record(
        self, *, who: str, role: str, action: str, target: str, count: int, detail: Optional[str] = None
    ) -> ObjectId:
        """Insert one record; a retried try that finds its own ``_id`` already stored is done."""
        doc = {
            "_id": ObjectId(),
            "at": self.store.now(),
            "who": who[:200],
            "role": role,
            "action": action,
            "target": target[:2000],
            "count": int(count),
        }
        if detail:
            doc["detail"] = detail[:2000]

        def call() -> None:
            _indexes.ensure(self.collection, self._create_index)
            try:
                self.collection.insert_one(dict(doc))
            except DuplicateKeyError:
                pass  # an earlier try whose reply was lost

        self.store.retry(call, "audit_record")
        return ObjectId(doc["_id"])

    def page(self, limit: int, before: Optional[ObjectId] = None) -> list[dict[str, Any]]:
        """Newest first, older than ``before``, on the ``_id`` index."""
        query: dict[str, Any] = {"_id": {"$lt": before}} if before is not None else {}

        def find() -> list[dict[str, Any]]:
            cursor = self.collection.find(query, sort=[("_id", -1)], limit=limit, max_time_ms=_MAX_TIME_MS).hint("_id_")
            return list(cursor)

        def call() -> list[dict[str, Any]]:
            return _indexes.hinted(self.collection, self._create_index, find)

        return list(self.store.retry(call, "audit_page"))
