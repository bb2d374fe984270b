"""The stored limit definitions (``<jobs>_limits``), and how every worker learns of a change.

Each change (:meth:`LimitDefinitions.define`, a removal, the mutex marker)
bumps ``limits_version`` in the pause document of the control collection,
which workers read anyway (every ``pause_refresh_ms``, when about to claim;
see :meth:`.control.Control.pause_state`). A worker reads the definitions
again only when that version moved, so a queue that never defined a limit
pays no read for them. A caller that reads no pause state (a bare
``store.jobs.claim``) re-reads them at most every :data:`REFRESH_S`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..limits import MUTEX, MUTEX_LIMIT, Limit
from .handle import JobStore

__all__ = ["REFRESH_S", "LimitDefinitions"]

#: How long a caller that reads no pause state trusts the definitions it read.
REFRESH_S = 1.0
#: The stored marker that some job uses a mutex key (then every claim admits mutex keys).
_MUTEX_MARKER = {"_id": MUTEX, "builtin": True}


class LimitDefinitions:
    """Stores the limits, and gives claims the ones to admit, read again only when they changed."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._cached: tuple[Limit, ...] = ()
        self._read_at = -REFRESH_S
        #: The definitions' version last seen in the pause document, and when (monotonic).
        self._version: Optional[int] = None
        self._version_at = -math.inf
        #: The version the cached definitions were read at (None: read them again).
        self._read_version: Optional[int] = None
        self._mutex_marked = False
        #: Whether this process ever saw a limit stored (a version above 0, or one of its own): sticky.
        self._seen = False

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        return self._store.sibling("limits")

    def define(self, limit: Limit) -> None:
        """Store (or replace) ``limit``; every worker applies it from its next pause read."""
        doc = limit.as_doc()
        self._store.retry(lambda: self.collection.replace_one({"_id": limit.name}, doc, upsert=True), "define_limit")
        self.changed()

    def delete(self, name: str) -> bool:
        """Delete the definition ``name`` (announce it with :meth:`changed`); False if there was none."""
        deleted = self._store.retry(lambda: self.collection.delete_one({"_id": name}).deleted_count, "remove_limit")
        return bool(deleted)

    def stored(self) -> list[Limit]:
        """The limits stored in the database (the built-in mutex not included), by name."""
        docs = self._store.retry(lambda: list(self.collection.find().sort("_id", 1)), "limits")
        return [Limit.from_doc(d) for d in docs if not d.get("builtin")]

    def in_use(self) -> list[Limit]:
        """Every stored limit (the mutex one once marked), by name; none read when the pause state says none."""
        if self._known_version() == 0:
            return []
        docs = self._store.retry(lambda: list(self.collection.find().sort("_id", 1)), "limits")
        return [MUTEX_LIMIT if d.get("builtin") else Limit.from_doc(d) for d in docs]

    def none_stored(self) -> bool:
        """Whether this process never saw a limit (nor mutex key) stored: none to sweep.

        Sticky rather than :meth:`_known_version`, which forgets the version
        a few seconds after the last pause read, and an idle worker on its
        change stream reads the pause state only when it changes.
        """
        return not self._seen

    def mark_mutex(self) -> None:
        """Record, once per process, that jobs use mutex keys: from then on every claim admits them."""
        if self._mutex_marked:
            return

        def call() -> None:
            try:
                self.collection.update_one({"_id": MUTEX}, {"$setOnInsert": _MUTEX_MARKER}, upsert=True)
            except DuplicateKeyError:
                pass  # another process marked it first

        self._store.retry(call, "mark_mutex")
        self.changed()  # every time (once per process): a lost reply must not leave the marker unannounced
        self._mutex_marked = True

    def observe(self, version: int) -> None:
        """The definitions' version just read in the pause document (see :meth:`.control.Control.pause_state`)."""
        self._version, self._version_at = version, time.monotonic()
        self._seen = self._seen or version > 0

    def changed(self) -> None:
        """Announce a change of the definitions to every worker, and read them again here."""
        self._store.control.bump_limits()
        self._read_at, self._read_version, self._version = -REFRESH_S, None, None
        self._seen = True

    def _known_version(self) -> Optional[int]:
        """The version last observed, if recent enough to trust (the poller reads it every ``pause_refresh_ms``)."""
        fresh = 2 * max(REFRESH_S, self._store.config.pause_refresh_ms / 1000)
        return self._version if time.monotonic() - self._version_at <= fresh else None

    def active(self) -> tuple[Limit, ...]:
        """The limits claims must admit (the mutex one once marked).

        Read again when the version seen in the pause document moved (never,
        while no limit was ever stored), else after :data:`REFRESH_S`.
        """
        version = self._known_version()
        if version is not None:
            if version == 0 and self._read_version is None:
                self._cached, self._read_version = (), 0  # no limit was ever stored
            if version == self._read_version:
                return self._cached
        elif time.monotonic() - self._read_at < REFRESH_S:
            return self._cached
        docs = self._store.retry(lambda: list(self.collection.find()), "limits")
        limits: list[Limit] = []
        for doc in docs:
            if doc.get("builtin"):
                limits.append(MUTEX_LIMIT)
                continue
            try:
                limits.append(Limit.from_doc(doc))
            except Exception:  # noqa: BLE001 - a hand-edited definition must not stop every claim
                self._store.log.error("ignoring the malformed limit definition %r", doc.get("_id"))
        self._cached = tuple(sorted(limits, key=lambda limit: limit.name))
        self._read_at, self._read_version = time.monotonic(), version
        return self._cached
