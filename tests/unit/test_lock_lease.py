"""The lease over a backend that tests steer: renewal timing, stickiness of a loss, errors, local wake-ups."""

from __future__ import annotations

import threading
import time
from typing import Optional

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue import LockLost
from mongo_job_queue.locks import Lock


class MemoryLocks:
    """An in-memory backend with the semantics of the real ones, and gates to delay or fail its calls."""

    name = "memory"

    def __init__(self) -> None:
        self.locks: dict[str, tuple[str, int, float]] = {}
        self.token = 0
        self.guard = threading.Lock()
        self.acquire_delay = 0.0
        self.renew_gate: Optional[threading.Event] = None
        self.renew_error: Optional[Exception] = None
        self.renewals = 0

    def acquire(self, key: str, holder: str, ttl_ms: int) -> Optional[int]:
        time.sleep(self.acquire_delay)  # a slow round trip, after which the server set the expiry
        with self.guard:
            now = time.monotonic()
            current = self.locks.get(key)
            if current is not None and current[2] > now - self.acquire_delay and current[0] != holder:
                return None
            self.token += 1
            self.locks[key] = (holder, self.token, now - self.acquire_delay + ttl_ms / 1000)
            return self.token

    def renew(self, key: str, holder: str, token: int, ttl_ms: int) -> bool:
        if self.renew_gate is not None:
            assert self.renew_gate.wait(10)
        if self.renew_error is not None:
            raise self.renew_error
        with self.guard:
            self.renewals += 1
            current = self.locks.get(key)
            now = time.monotonic()
            if current is None or current[:2] != (holder, token) or current[2] <= now:
                return False
            self.locks[key] = (holder, token, now + ttl_ms / 1000)
            return True

    def release(self, key: str, holder: str, token: int) -> bool:
        with self.guard:
            current = self.locks.get(key)
            if current is None or current[:2] != (holder, token):
                return False
            del self.locks[key]
            return True


def test_a_slow_acquire_is_renewed_on_time() -> None:
    # The expiry runs from before the acquire's round trip: the first renewal is due a third of the
    # TTL after the acquire began, not after it returned (which would let a slow acquire lapse).
    backend = MemoryLocks()
    backend.acquire_delay = 0.4
    lease = Lock(backend, "k", ttl_ms=600).acquire()
    backend.acquire_delay = 0.0
    try:
        holds_for(lambda: lease.held, duration=1.2, interval=0.01, what="the lease stays held")
        assert backend.renewals >= 3
    finally:
        lease.release()


def test_a_lease_past_its_deadline_stays_lost_even_if_a_late_renewal_succeeds() -> None:
    backend = MemoryLocks()
    backend.renew_gate = threading.Event()
    lease = Lock(backend, "k", ttl_ms=200).acquire()
    try:
        wait_until(lambda: not lease.held, timeout=5, what="the local deadline passes while the renewal hangs")
        backend.locks["k"] = (lease.holder, lease.token, time.monotonic() + 60)  # the backend would still renew
        backend.renew_gate.set()
        holds_for(lambda: not lease.held, duration=0.3, what="the lease never comes back")
        with pytest.raises(LockLost, match="expired before a renewal succeeded"):
            lease.check()
    finally:
        backend.renew_gate.set()
        lease.release()


def test_renewal_errors_are_retried_until_the_lease_runs_out() -> None:
    backend = MemoryLocks()
    lease = Lock(backend, "k", ttl_ms=900).acquire()
    backend.renew_error = ConnectionError("down")
    try:
        time.sleep(0.45)  # the renewal at 0.3 s fails; the lease is still within its TTL
        backend.renew_error = None
        holds_for(lambda: lease.held, duration=1.5, interval=0.01, what="a later renewal succeeds in time")
        backend.renew_error = ConnectionError("down for good")
        wait_until(lambda: not lease.held, timeout=5)
        with pytest.raises(LockLost, match="expired before a renewal succeeded"):
            lease.check()
    finally:
        lease.release()


def test_a_local_release_wakes_a_waiter_at_once() -> None:
    backend = MemoryLocks()

    def wait_for_it(got: list[float]) -> None:
        lease = Lock(backend, "k").acquire()
        got.append(time.monotonic())
        lease.release()

    for _ in range(5):  # without the wake-up, each would wait out part of a backoff of up to 0.5 s
        first = Lock(backend, "k", ttl_ms=30_000).acquire()
        got: list[float] = []
        waiter = threading.Thread(target=wait_for_it, args=(got,))
        waiter.start()
        time.sleep(0.8)  # the waiter's backoff has grown to a few hundred ms
        released = time.monotonic()
        first.release()
        waiter.join(5)
        assert got and got[0] - released < 0.1


def test_a_forked_child_does_not_hold_nor_release_the_parents_lease() -> None:
    # Before the fix the child's check() passed and its with-exit freed the parent's lock.
    import os

    backend = MemoryLocks()
    lock = Lock(backend, "forked", ttl_ms=5_000)
    with lock as lease:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            code = 0
            try:
                if lease.held:
                    code |= 1
                try:
                    lease.check()
                    code |= 2
                except LockLost as exc:
                    if "fork" not in str(exc):
                        code |= 4
                if lease.release() is not False:
                    code |= 8
                lock.__exit__(None, None, None)  # what leaving the with-block in the child does
                if "forked" not in backend.locks:
                    code |= 16
            except BaseException:
                code |= 32
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lease.held  # the parent's lease is untouched
        assert backend.locks["forked"][:2] == (lease.holder, lease.token)
    assert "forked" not in backend.locks
