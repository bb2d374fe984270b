"""The audit trail: every admin action (who, role, what, on what, how many jobs, when) in ``<jobs>_audit``.

Refused attempts are recorded too, and actions that failed part-way, with
what they did: ``detail`` says why.
"""

from __future__ import annotations

from typing import Any, Optional

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ...store import JobStore
from ...store.index_once import IndexOnce
from .reads import AdminReads

__all__ = ["AuditLog"]

#: Audit records are removed after this long (a TTL index on ``at``).
AUDIT_TTL_S = 400 * 24 * 3600
_indexes = IndexOnce()
_SUFFIX = "_audit"


class AuditLog:
    """Writes (through the queue's store, retried) and pages (through ``reads``, once) a queue's audit collection."""

    def __init__(self, store: JobStore, reads: AdminReads) -> None:
        self.store = store
        self.reads = reads

    @property
    def collection(self) -> Any:
        return self.store.sibling("audit")

    def _create_index(self) -> None:
        self.collection.create_index([("at", -1)], name="mjq_audit_at", expireAfterSeconds=AUDIT_TTL_S)

    def record(
        self, *, who: str, role: str, action: str, target: str, count: int, detail: Optional[str] = None
    ) -> ObjectId:
        """Insert one record; a retried try that finds its own ``_id`` already stored is done."""
        doc: dict[str, Any] = {
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
            try:
                self.collection.insert_one(dict(doc))
            except DuplicateKeyError:
                pass  # an earlier try whose reply was lost

        _indexes.ensure(self.store, _SUFFIX, self._create_index)
        self.store.retry(call, "audit_record")
        return ObjectId(doc["_id"])

    def page(self, limit: int, before: Optional[ObjectId] = None) -> list[dict[str, Any]]:
        """Newest first, older than ``before``, on the ``_id`` index."""
        query: dict[str, Any] = {"_id": {"$lt": before}} if before is not None else {}

        def find() -> list[dict[str, Any]]:
            return list(self.collection.find(query, sort=[("_id", -1)], limit=limit).hint("_id_"))

        # The TTL index is created before the first read, as before the first write.
        return self.reads.indexed(_indexes, _SUFFIX, self._create_index, find, "audit_page", "Reading the audit trail")
