"""The store's retention queries: one TTL index per finished status, kept in line with the settings.

:class:`RetentionQueries` is a base of :class:`~.store_control.ControlQueries`,
split from it for size; every query still lives behind the one store object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pymongo.errors import OperationFailure

from .status import CANCELLED, COMPLETED, FAILED
from .store_base import INDEX_BUILD_MS, StoreBase

__all__ = ["RetentionQueries", "retention_index_name"]


_INDEX_NOT_FOUND = 27
#: How often ensure_retention_indexes reads, changes and checks before it gives up on a moving target.
_RETENTION_ROUNDS = 3


def _ttl_index_is(index: Optional[Mapping[str, Any]], status: str, seconds: Optional[int]) -> bool:
    """Whether ``index`` has the shape of the TTL index of ``status``, and expires after ``seconds`` (None: any)."""
    if index is None:
        return False
    same_shape = dict(index.get("key", {})) == {"finished_at": 1} and dict(
        index.get("partialFilterExpression") or {}
    ) == {"status": status}
    return same_shape and (seconds is None or index.get("expireAfterSeconds") == seconds)


def retention_index_name(status: str) -> str:
    """The name of the TTL index that removes finished jobs of ``status``."""
    return f"mjq_ttl_{status}"


class RetentionQueries(StoreBase):
    """TTL index queries; a base of the store's control queries."""

    def retention_seconds(self) -> dict[str, Optional[int]]:
        """The TTL per finished status, in whole seconds (rounded up), or None to keep forever."""
        settings = {
            COMPLETED: self.config.retention_completed_ms,
            FAILED: self.config.retention_failed_ms,
            CANCELLED: self.config.retention_cancelled_ms,
        }
        return {status: None if ms is None else -(-ms // 1000) for status, ms in settings.items()}

    def ensure_retention_indexes(self) -> None:
        """Make the per-status TTL indexes match the retention settings.

        One partial TTL index per finished status on ``finished_at``, named by
        status, so unfinished jobs (which the filter never matches) are never
        removed. A changed setting is applied with ``collMod`` (or a drop and
        create where the server refuses it); a setting of None drops the index.

        Peers starting at the same moment make the same changes: an index a
        peer dropped first, or created first, is this call's work done, and
        the result is checked by reading the indexes again (a few rounds, so
        a peer's change in between is seen).
        """
        wanted = self.retention_seconds()

        def call() -> list[str]:
            existing = {ix["name"]: ix for ix in self.collection.list_indexes()}
            for status, seconds in wanted.items():
                self._apply_retention(status, seconds, existing.get(retention_index_name(status)))
            existing = {ix["name"]: ix for ix in self.collection.list_indexes()}
            differ = []
            for status, seconds in wanted.items():
                index = existing.get(retention_index_name(status))
                if (index is not None) if seconds is None else not _ttl_index_is(index, status, seconds):
                    differ.append(status)
            return differ

        for _ in range(_RETENTION_ROUNDS):
            differ = self._retry(call, "ensure_retention_indexes", extra_ms=INDEX_BUILD_MS)
            if not differ:
                return
        self.log.warning(
            "TTL indexes for %s jobs differ from this process's retention settings: another process "
            "with other settings changed them meanwhile (the last to start decides)",
            ", ".join(differ),
        )

    def _apply_retention(self, status: str, seconds: Optional[int], index: Optional[Mapping[str, Any]]) -> None:
        name = retention_index_name(status)
        if seconds is None:
            if index is not None:
                self._drop_index(name)
                self.log.info("retention of %s jobs off: dropped TTL index %s", status, name)
            return
        if index is None:
            self._create_ttl_index(status, seconds)
            return
        if _ttl_index_is(index, status, seconds):
            return
        self.log.info(
            "retention of %s jobs changed from %s s to %s s: updating TTL index %s",
            status,
            index.get("expireAfterSeconds"),
            seconds,
            name,
        )
        if _ttl_index_is(index, status, None) and "expireAfterSeconds" in index:
            try:
                self.collection.database.command(
                    {"collMod": self.collection.name, "index": {"name": name, "expireAfterSeconds": seconds}}
                )
                return
            except (OperationFailure, TypeError, NotImplementedError) as exc:
                if isinstance(exc, OperationFailure) and exc.code == _INDEX_NOT_FOUND:
                    pass  # a peer dropped it to recreate it: create ours (or find theirs)
                else:
                    self.log.debug("collMod refused (%r); recreating %s", exc, name)
        self._drop_index(name)
        self._create_ttl_index(status, seconds)

    def _drop_index(self, name: str) -> None:
        try:
            self.collection.drop_index(name)
        except OperationFailure as exc:
            if exc.code != _INDEX_NOT_FOUND:
                raise  # else a peer dropped it first: the same outcome

    def _create_ttl_index(self, status: str, seconds: int) -> None:
        try:
            self.collection.create_index(
                [("finished_at", 1)],
                name=retention_index_name(status),
                expireAfterSeconds=seconds,
                partialFilterExpression={"status": status},
            )
        except OperationFailure as exc:
            # A peer created it first (IndexOptionsConflict, IndexKeySpecsConflict):
            # the caller reads the indexes again and checks what holds.
            if exc.code not in (85, 86):
                raise

    def retention_indexes(self) -> dict[str, dict[str, Any]]:
        """The TTL indexes on the jobs collection by name, as the server reports them."""
        return {
            ix["name"]: dict(ix)
            for ix in self._retry(lambda: list(self.collection.list_indexes()), "list_indexes")
            if "expireAfterSeconds" in ix
        }
