"""Leases on a lock backend: acquire with backoff, renew in the background, check, release.

A :class:`Lock` is the request (key, TTL, blocking, timeout, maximum
lifetime, backend); each :meth:`Lock.acquire` gives a new :class:`Lease`,
which carries the fencing token and a random holder id of its own. The
holder id lives on the lease object, not in thread-local storage, so any
thread may check or release it (redis-py's thread-local tokens surprise
exactly there). A daemon thread renews the lease every third of its TTL
while it is held, and stops renewing at ``max_lifetime_ms``: a hung holder
loses its lock then, instead of keeping it forever.

The lease knows, by this process's monotonic clock, until when the backend
surely still counts it as held: the start of the last successful renewal
plus its TTL, less a clock-drift margin. :meth:`Lease.check` raises
:class:`~mongo_job_queue.errors.LockLost` past that point or once a
renewal found the lock taken over. A check cannot make a lock safe (the
process may pause right after it): the token checked by the storage does.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from types import TracebackType
from typing import Optional

from ..clock import MAX_DURATION_MS
from ..errors import InvalidLockError, LockBackendError, LockLost, LockUnavailable
from .backend import LockBackend

__all__ = ["MAX_KEY_LENGTH", "MIN_TTL_MS", "Lease", "Lock"]

log = logging.getLogger(__name__)

#: The longest lock key accepted, in characters.
MAX_KEY_LENGTH = 1000
#: The shortest ``ttl_ms`` (and ``max_lifetime_ms``) accepted. The lease counts itself held until 99 % of
#: the TTL less 2 ms after its acquire *began*, and renews at a third of it: at 100 ms the renewal has some
#: 60 ms for its round trip and the clock error of ``store.now()`` (a few ms). A TTL of a few ms would be
#: lost before the acquire returned, or between two renewals.
MIN_TTL_MS = 100
#: Part of the TTL not counted on, for clock drift between this host and the backend's server.
_DRIFT = 0.01
#: And a fixed margin on top, in seconds.
_MARGIN_S = 0.002
#: The first and the longest wait between two tries of a blocking acquire, in seconds.
_BACKOFF_MIN_S = 0.005
_BACKOFF_MAX_S = 0.5
#: Renewals come every third of the TTL, but never more often than this (a TTL of a few ms cannot be kept).
_MIN_INTERVAL_S = 0.005

#: Notified when a lease of this process is released: local waiters try again at once.
_released = threading.Condition()
_generation = 0


def _notify_released() -> None:
    global _generation
    with _released:
        _generation += 1
        _released.notify_all()


def _check_ms(name: str, value: Optional[int], *, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_DURATION_MS:
        raise InvalidLockError(
            f"{name} must be an int from {minimum} to {MAX_DURATION_MS} (100 years)"
            f"{' or None' if optional else ''}, got {value!r:.80}"
        )


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidLockError(
            f"a lock key must be a non-empty str of at most {MAX_KEY_LENGTH} characters, got {key!r:.80}"
        )
    try:
        key.encode("utf-8")  # both backends store it as UTF-8: a lone surrogate cannot be
    except UnicodeEncodeError:
        raise InvalidLockError(f"a lock key must be encodable as UTF-8, got {key!r:.80}") from None


class Lock:
    """A lock request on one key; :meth:`acquire` (or ``with``) takes it and gives a :class:`Lease`.

    Not reentrant: a second acquire of a held key waits like any other
    holder, even in the same thread.

    Raises:
        InvalidLockError: an empty, too long or not UTF-8-encodable key;
            ``ttl_ms`` or ``max_lifetime_ms`` below :data:`MIN_TTL_MS`,
            ``timeout_ms`` < 0, or any of them above 100 years
            (:data:`~mongo_job_queue.clock.MAX_DURATION_MS`).
    """

    def __init__(
        self,
        backend: LockBackend,
        key: str,
        *,
        ttl_ms: int = 30_000,
        blocking: bool = True,
        timeout_ms: Optional[int] = None,
        max_lifetime_ms: Optional[int] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        _check_key(key)
        _check_ms("ttl_ms", ttl_ms, minimum=MIN_TTL_MS, optional=False)
        _check_ms("timeout_ms", timeout_ms, minimum=0, optional=True)
        _check_ms("max_lifetime_ms", max_lifetime_ms, minimum=MIN_TTL_MS, optional=True)
        if not isinstance(blocking, bool):
            raise InvalidLockError(f"blocking must be a bool, got {blocking!r:.80}")
        if timeout_ms is not None and not blocking:
            raise InvalidLockError("timeout_ms applies to a blocking acquire only")
        self.backend = backend
        self.key = key
        self.ttl_ms = ttl_ms
        self.blocking = blocking
        self.timeout_ms = timeout_ms
        self.max_lifetime_ms = max_lifetime_ms
        self.log = logger or log
        self._entered = threading.local()  # the leases of this thread's open ``with`` blocks

    def acquire(self) -> Lease:
        """Take the lock, waiting with backoff if ``blocking`` (up to ``timeout_ms``; None: no limit).

        Raises:
            LockUnavailable: held by another holder, and not acquired in time.
        """
        started = time.monotonic()
        deadline = None if self.timeout_ms is None else started + self.timeout_ms / 1000
        ttl_ms = self.ttl_ms if self.max_lifetime_ms is None else min(self.ttl_ms, self.max_lifetime_ms)
        holder = secrets.token_hex(12)
        backoff = _BACKOFF_MIN_S
        while True:
            with _released:
                generation = _generation
            tried = time.monotonic()
            try:
                token = self.backend.acquire(self.key, holder, ttl_ms)
            except LockBackendError:
                raise  # it does not answer: an abandon would wait as long; the key's expiry frees it
            except Exception:
                self._abandon(holder)  # it may have applied: a holder no lease knows must not keep the key
                raise
            if token is not None:
                return Lease(self, holder, token, tried, ttl_ms)
            now = time.monotonic()
            if not self.blocking or (deadline is not None and now >= deadline):
                waited = "" if not self.blocking else f" within {self.timeout_ms} ms"
                raise LockUnavailable(f"lock {self.key!r} is held by another holder: not acquired{waited}")
            wait = random.uniform(backoff / 2, backoff)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            with _released:
                if _generation == generation:
                    _released.wait(wait)  # a local release wakes us at once
            backoff = min(backoff * 2, _BACKOFF_MAX_S, max(_BACKOFF_MIN_S, self.ttl_ms / 4000))

    def _abandon(self, holder: str) -> None:
        try:
            if self.backend.abandon(self.key, holder):
                self.log.warning("lock %r: a failed acquire had applied; freed it again", self.key)
        except Exception as exc:  # noqa: BLE001 - best effort: the acquire's own error is raised
            self.log.warning("lock %r: a failed acquire may hold it until its TTL runs out (%r)", self.key, exc)

    def __enter__(self) -> Lease:
        lease = self.acquire()
        stack: list[Lease] = self._entered.__dict__.setdefault("stack", [])
        stack.append(lease)
        return lease

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self._entered.stack.pop().release()


class Lease:
    """One holding of a lock: its fencing :attr:`token`, renewed in the background until :meth:`release`."""

    def __init__(self, lock: Lock, holder: str, token: int, started: float, ttl_ms: int) -> None:
        self.lock = lock
        self.key = lock.key
        #: The fencing token: greater than every earlier holder's of this key. Pass it to fenced writes.
        self.token = token
        #: This lease's random holder id, as the backend stores it.
        self.holder = holder
        self._backend = lock.backend
        self._log = lock.log
        self._cap = None if lock.max_lifetime_ms is None else started + lock.max_lifetime_ms / 1000
        self._started = started
        self._valid_until = self._until(started, ttl_ms)
        #: The last expiry set was cut short by ``max_lifetime_ms``.
        self._capped = ttl_ms < lock.ttl_ms
        self._lost: Optional[str] = None
        self._released = False
        #: The process that holds it: a forked child inherits the object, not the lock (nor its renewal).
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"mjq-lock-{lock.key[:40]}", daemon=True)
        self._renewer.start()

    @staticmethod
    def _until(started: float, ttl_ms: int) -> float:
        return started + ttl_ms / 1000 * (1 - _DRIFT) - _MARGIN_S

    # -- state ---------------------------------------------------------------

    def _inherited(self) -> bool:
        return os.getpid() != self._pid

    def _problem(self) -> Optional[str]:
        if self._inherited():
            return "it was inherited across fork(): the parent process holds it"
        if self._released:
            return "it was released"
        if self._lost is not None:
            return self._lost
        if time.monotonic() >= self._valid_until:
            # Lost for good, even if a renewal in flight succeeds: a lease never comes back.
            if self._capped:
                self._mark_lost(f"its max_lifetime_ms ({self.lock.max_lifetime_ms}) was reached")
            else:
                self._mark_lost("it expired before a renewal succeeded")
            return self._lost
        return None

    @property
    def held(self) -> bool:
        """Whether this lease still surely holds its lock (as :meth:`check` judges it)."""
        return self._problem() is None

    @property
    def remaining_ms(self) -> int:
        """How long the lock surely stays held without another renewal, in ms (0 once lost)."""
        if not self.held:
            return 0
        return max(0, int((self._valid_until - time.monotonic()) * 1000))

    def check(self) -> None:
        """Raise :class:`~mongo_job_queue.errors.LockLost` if this lease lost its lock.

        Call it before a step that must not overlap another holder's; the
        writes themselves stay safe only when they check :attr:`token`.
        """
        problem = self._problem()
        if problem is not None:
            raise LockLost(f"lock {self.key!r} (token {self.token}) is lost: {problem}")

    # -- release ---------------------------------------------------------------

    def release(self) -> bool:
        """Stop renewing and free the lock; True if it was still ours. Idempotent, from any thread.

        A backend error is logged, not raised: the lock is then freed by its
        expiry, at most ``ttl_ms`` later. In a forked child it does nothing
        (False): the lock is the parent's.
        """
        if self._inherited():
            return False
        with self._guard:
            if self._released:
                return False
            self._released = True
        self._stop.set()
        if self._renewer is not threading.current_thread():
            self._renewer.join(0.1)
        freed = False
        try:
            freed = self._backend.release(self.key, self.holder, self.token)
        except Exception as exc:  # noqa: BLE001 - the expiry frees it; the caller's own error matters more
            self._log.warning("lock %r: release failed (%r); it expires within %d ms", self.key, exc, self.lock.ttl_ms)
        finally:
            _notify_released()
        if not freed and self._lost is None:
            self._log.warning("lock %r (token %d) was lost before its release", self.key, self.token)
        return freed

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.release()

    # -- renewal ---------------------------------------------------------------

    def _mark_lost(self, reason: str) -> None:
        if self._lost is None and not self._released:
            self._lost = reason
            self._log.warning("lock %r (token %d) lost: %s", self.key, self.token, reason)

    def _renew_loop(self) -> None:
        """Renew a third of the TTL after the last successful renewal (or the acquire) began."""
        interval = max(_MIN_INTERVAL_S, self.lock.ttl_ms / 3000)
        due = self._started + interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            started = time.monotonic()
            if self._problem() is not None:
                return  # lost (or past its maximum lifetime): renewing now would revive it
            ttl_ms = self.lock.ttl_ms
            if self._cap is not None:
                ttl_ms = min(ttl_ms, int((self._cap - started) * 1000))
                if ttl_ms < 1:
                    return  # the maximum lifetime: no more renewals, the lease ends at its expiry
            try:
                renewed = self._backend.renew(self.key, self.holder, self.token, ttl_ms)
            except Exception as exc:  # noqa: BLE001 - try again until the lease runs out
                self._log.warning("lock %r: renewal failed (%r), trying again", self.key, exc)
                due = time.monotonic() + max(0.01, min(interval / 2, (self._valid_until - time.monotonic()) / 2))
                continue
            if self._stop.is_set() or self._lost is not None:
                return
            if not renewed:
                self._mark_lost("it expired or was taken over by another holder")
                return
            self._capped = ttl_ms < self.lock.ttl_ms
            self._valid_until = self._until(started, ttl_ms)
            due = started + interval
