"""Whether a job type has a handler anywhere, so a typo in a type string does not fail silently.

A job type is known when this process registered a handler for it, or when
a worker in the worker registry (:mod:`.store.workers`: every worker seen
in the last 7 days, live or not) claims it. The registry is read only for a
type this process has no handler for, and its answer is cached; a type once
found known is not checked again. An unknown type is logged once per
process and collection, or refused with ``strict_types``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from .errors import InvalidJobError
from .handlers import HandlerRegistry
from .store import JobStore

__all__ = ["KnownTypes"]

log = logging.getLogger(__name__)

#: How long the registry's job types are trusted before a type missing from them reads it again.
_REFRESH_S = 2.0

#: ``(connection alias, collection, job type)`` warned about in this process, by whichever queue object.
_warned: set[tuple[str, str, str]] = set()
_warned_lock = threading.Lock()


class KnownTypes:
    """The job types with a handler in this process or in the worker registry of one store."""

    def __init__(self, registry: HandlerRegistry, store: JobStore) -> None:
        self.registry = registry
        self.store = store
        self._workers = store.workers
        self._confirmed: set[str] = set()
        self._registered: frozenset[str] = frozenset()
        self._read_at = -float("inf")

    def unknown(self, job_types: Iterable[str]) -> list[str]:
        """The types among ``job_types`` that no handler is known for, in order, each once."""
        todo = [t for t in dict.fromkeys(job_types) if t not in self.registry and t not in self._confirmed]
        if not todo:
            return []
        registered = self._registered
        if any(t not in registered for t in todo) and time.monotonic() - self._read_at > _REFRESH_S:
            registered = frozenset(t for w in self._workers.list() for t in w.job_types)
            self._registered, self._read_at = registered, time.monotonic()
        self._confirmed.update(t for t in todo if t in registered)
        return [t for t in todo if t not in registered]

    def check(self, job_types: Iterable[str], *, strict: bool) -> None:
        """Refuse (``strict``) or warn about, once per type, job types no handler is known for.

        Raises:
            InvalidJobError: with ``strict``, a type no handler is known for.
        """
        if strict:
            missing = self.unknown(job_types)
            if missing:
                raise InvalidJobError(
                    f"no handler is registered for job type(s) {', '.join(map(repr, missing))}, neither in this "
                    "process nor by any worker in the registry (strict_types); nothing was written"
                )
            return
        candidates = [t for t in job_types if t not in self.registry and not self.warned(t)]
        if not candidates:
            return
        try:
            missing = self.unknown(candidates)
        except Exception:  # only a warning: never fail an enqueue on it
            log.debug("could not read the worker registry to check job types", exc_info=True)
            return
        for job_type in missing:
            if self.mark_warned(job_type):
                log.warning(
                    "enqueued job type %r, but no handler for it is registered in this process or by any worker "
                    "in the registry: check its spelling (warned once per type)",
                    job_type,
                    extra={"job_type": job_type},
                )

    def _key(self, job_type: str) -> tuple[str, str, str]:
        model = self.store.model
        return str(model._meta.get("db_alias", "default")), str(model._get_collection_name()), job_type

    def warned(self, job_type: str) -> bool:
        return self._key(job_type) in _warned

    def mark_warned(self, job_type: str) -> bool:
        """Note that the unknown ``job_type`` was reported; False if it already had been."""
        key = self._key(job_type)
        with _warned_lock:
            if key in _warned:
                return False
            _warned.add(key)
            return True
