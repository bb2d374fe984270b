"""What a lock backend does: take, renew and release one key's lock, each fenced by the holder and its token.

A backend keeps one lock per key, held by at most one *holder* (a random
id per lease) until its expiry, which the backend judges by its own
server's clock. Taking the lock issues a fencing token, an integer that
grows strictly for each key and never goes backwards, so a storage write
that checks it refuses a holder that lost the lock without noticing.
:class:`~mongo_job_queue.locks.Lease` is built on top of any backend: the
MongoDB one (:class:`~mongo_job_queue.store.locks.MongoLocks`, the default)
or Redis (:class:`mongo_job_queue.contrib.redis.RedisLocks`).
"""

from __future__ import annotations

from typing import Optional, Protocol

__all__ = ["LockBackend"]


class LockBackend(Protocol):
    """The three atomic steps of a lock on one key; every method may raise its store's errors."""

    #: Names the backend in logs (``mongodb``, ``redis``).
    name: str

    def acquire(self, key: str, holder: str, ttl_ms: int) -> Optional[int]:
        """Take ``key`` for ``holder`` until ``ttl_ms`` from now if free or expired; its new token, or None if held.

        A retry of a try that did apply (lost reply) finds ``holder`` holding
        the key and must return a token of its own again, never None.
        """

    def renew(self, key: str, holder: str, token: int, ttl_ms: int) -> bool:
        """Move the expiry to ``ttl_ms`` from now if ``holder`` still holds ``key`` with ``token``, unexpired."""

    def release(self, key: str, holder: str, token: int) -> bool:
        """Free ``key`` if ``holder`` holds it with ``token``; False (and nothing done) after a takeover."""

    def abandon(self, key: str, holder: str) -> bool:
        """Free ``key`` if ``holder`` holds it, under any token: one bounded try, best effort.

        For an acquire that raised after it may have applied (its reply
        lost, its retries spent): without it, that holder, whom no lease
        knows, would keep the key for its whole TTL.
        """
