"""Limit hints in Redis: "full" and "rate opens at" per limiter, so contended claims skip MongoDB round trips.

``queue.add_limit_hints(RedisLimitHints(client))``. Per limiter document
(``<prefix>{<database>.<jobs>/<id>}:<kind>:<limiter id>``, one hash slot
per jobs collection, the id its own random one so namesakes on other
deployments never meet) three short-lived keys, each written only after
MongoDB answered:

* ``f``, *full*: the time (server time, ms) a push was refused or filled a
  ``max_running=1`` limiter; the claimers of other processes skip their push.
* ``x``, *freed*: the time a run left it. It deletes an older ``f``, and a
  ``f`` observed before it is not written (a late writer cannot undo a release).
* ``r``, *rate opens at*: a lower bound of the rate's next start, after a
  spend or a reservation, kept as the greatest seen (the GCRA state only grows).

Every key lives at most ``ttl_ms`` (capped by the lease), and a key that
would live longer (set by hand, with no or a longer expiry) is not read: a
hint is trusted at most that long after it was written, and no longer
than that from its stamp (a full hint not before it, less 50 ms for the
clocks' agreement; a rate's opening only when at most that far ahead). A hint that lies delays a job by at most
that long; a hint never admits: MongoDB's conditional update stays the
only admission (see :mod:`mongo_job_queue.store.limit_hints`).

Redis unreachable, frozen (a call past ``timeout_s``) or slow
(:data:`SLOW_IN_A_ROW` calls in a row slower than ``slow_ms``: a hint then
costs more than the MongoDB round trip it saves): the claims ask MongoDB
only, for :data:`PAUSE_AFTER_ERROR_S`, then try Redis again; one warning per
outage (at most every :data:`WARN_EVERY_S`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, TypeVar

import redis

from ...after_fork import renew_in_child
from ...store.limit_hints import Hint
from .bounds import bounded

__all__ = ["PAUSE_AFTER_ERROR_S", "SLOW_IN_A_ROW", "WARN_EVERY_S", "RedisLimitHints"]

log = logging.getLogger(__name__)

#: After a failed Redis call, the hints are neither read nor written for this long (claims ask MongoDB only).
PAUSE_AFTER_ERROR_S = 5.0
#: At most one warning per this long while Redis keeps failing.
WARN_EVERY_S = 300.0
#: Calls in a row slower than ``slow_ms`` that pause the hints like an error (one slow call may be a hiccup).
SLOW_IN_A_ROW = 3

T = TypeVar("T")

# KEYS: pairs (full, freed). ARGV: observed ms, ttl ms. A full hint is written unless a release came after.
_SAW_FULL = """
for i = 1, #KEYS, 2 do
  if (tonumber(redis.call('GET', KEYS[i + 1])) or 0) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  end
end
return 0
"""

# KEYS: pairs (full, freed). ARGV: release ms, ttl ms. Drops a full hint observed no later than the release.
_FREED = """
for i = 1, #KEYS, 2 do
  if (tonumber(redis.call('GET', KEYS[i])) or 0) <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[i])
  end
  if (tonumber(redis.call('GET', KEYS[i + 1])) or 0) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
  end
end
return 0
"""

# KEYS: rate. ARGV: opens ms, ttl ms. Keeps the greatest lower bound.
_SAW_RATE = """
if tonumber(ARGV[1]) > (tonumber(redis.call('GET', KEYS[1])) or 0) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: the hints read. ARGV: ttl ms. Each value, or false for a key that does not expire within ttl: one
# the hints never wrote (set by hand, with no or a longer expiry) is not trusted, whatever its stamp says.
_LOOK = """
local found = {}
for i = 1, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  found[i] = (left > 0 and left <= tonumber(ARGV[1])) and redis.call('GET', KEYS[i])
end
return found
"""

#: How far ahead of the reader's clock a full hint's stamp still counts as fresh (the clocks' agreement).
_AHEAD_MS = 50

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=timezone.utc)


def _ms(when: datetime) -> int:
    return (when - (_EPOCH if when.tzinfo is None else _EPOCH_UTC)) // timedelta(milliseconds=1)


def _at(ms: int, like: datetime) -> datetime:
    return (_EPOCH if like.tzinfo is None else _EPOCH_UTC) + timedelta(milliseconds=ms)


class RedisLimitHints:
    """Pre-checks of limits in Redis: ``queue.add_limit_hints(RedisLimitHints(client))`` on every worker.

    Args:
        client: A redis-py client. The hints use a copy of its connection pool with ``timeout_s``.
        prefix: Key prefix (the jobs collection's names and random id follow it): one of their own for the
            workers of a copy of the database (a restore), or to fit an ACL's key pattern.
        ttl_ms: The longest a hint is trusted (also capped by the queue's ``lease_ms``): what a stale or
            wrong hint can delay a job by. Hints matter for the moment between a claim's read of the limiters
            and its admissions, so a short one loses little.
        timeout_s: The socket and connect timeouts of the hints' calls, with no retries: a claim waits for
            a frozen or unreachable Redis at most that long, once per :data:`PAUSE_AFTER_ERROR_S`. Applied to
            a copy of the client's pool of the same kind and settings (any ``ConnectionPool``, blocking or
            Sentinel's); a client whose pool cannot be copied (a cluster client, a pool with a constructor
            of its own) is kept as it is, with a warning. None keeps the client's own.
        slow_ms: A call slower than this costs more than the MongoDB round trip it may save: after
            :data:`SLOW_IN_A_ROW` of them in a row the hints pause as after an error. None: no latency rule.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "mjq:limits:",
        ttl_ms: int = 1000,
        timeout_s: Optional[float] = 0.25,
        slow_ms: Optional[float] = 30,
    ) -> None:
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be at least 1, got {ttl_ms!r}")
        if slow_ms is not None and slow_ms <= 0:
            raise ValueError(f"slow_ms must be positive or None, got {slow_ms!r}")
        if timeout_s is not None:
            copy = bounded(client, timeout_s)
            if copy is None:
                log.warning(
                    "Redis limit hints: timeout_s=%s not applied to a %s (its pool cannot be copied); a claim may"
                    " wait for a frozen Redis as long as the client's own socket timeout allows",
                    timeout_s, type(client).__name__,
                )  # fmt: skip
            client = client if copy is None else copy
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self._look = client.register_script(_LOOK)
        self._saw_full = client.register_script(_SAW_FULL)
        self._freed = client.register_script(_FREED)
        self._saw_rate = client.register_script(_SAW_RATE)
        self.slow_s = None if slow_ms is None else slow_ms / 1000
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._warned_at: Optional[float] = None
        self._slow_in_row = 0
        #: Redis calls that failed (each one a fallback to MongoDB only), for tests and metrics.
        self.failures = 0
        #: Calls slower than ``slow_ms`` (answered, and used), for tests and metrics.
        self.slow_calls = 0
        renew_in_child(self)

    def _after_fork_in_child(self) -> None:
        # A lock held by a parent thread at fork() stays held forever in the child; the pause and the
        # count of slow calls were the parent's (the pool itself reconnects in a child: redis-py checks the pid).
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._slow_in_row = 0

    def bind(self, namespace: str, lease_ms: int) -> BoundHints:
        """The hints of one jobs collection (what ``queue.add_limit_hints`` calls)."""
        return BoundHints(self, f"{self.prefix}{{{namespace}}}:", max(1, min(self.ttl_ms, lease_ms)))

    def _call(self, what: str, fn: Callable[[], T], default: T) -> T:
        """``fn()``, or ``default`` while Redis is paused after an error or slow calls (never raises)."""
        began = time.monotonic()
        if began < self._paused_until:
            return default
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a hint only: any failure falls back to MongoDB
            with self._lock:
                self.failures += 1
            self._pause(f"{what}: {exc!r}")
            return default
        took = time.monotonic() - began
        if self.slow_s is None or took <= self.slow_s:
            self._slow_in_row = 0
            return result
        with self._lock:
            self.slow_calls += 1
            self._slow_in_row += 1
            slow = self._slow_in_row >= SLOW_IN_A_ROW
            if slow:
                self._slow_in_row = 0
        if slow:
            limit_ms, took_ms = self.slow_s * 1000, took * 1000
            self._pause(f"{SLOW_IN_A_ROW} calls in a row over slow_ms={limit_ms:g}, the last {what} {took_ms:.0f} ms")
        return result

    def _pause(self, why: str) -> None:
        """No Redis for :data:`PAUSE_AFTER_ERROR_S`; one warning per :data:`WARN_EVERY_S`."""
        now = time.monotonic()
        with self._lock:
            self._paused_until = now + PAUSE_AFTER_ERROR_S
            warn = self._warned_at is None or now - self._warned_at >= WARN_EVERY_S
            if warn:
                self._warned_at = now
        if warn:
            log.warning(
                "Redis limit hints unavailable (%s); claims ask MongoDB only, Redis tried again in %.0fs",
                why, PAUSE_AFTER_ERROR_S,
            )  # fmt: skip


class BoundHints:
    """The :class:`~mongo_job_queue.store.limit_hints.LimitHints` of one jobs collection."""

    def __init__(self, source: RedisLimitHints, base: str, ttl_ms: int) -> None:
        self.source = source
        self.base = base
        self.ttl_ms = ttl_ms

    def key(self, kind: str, lid: str) -> str:
        return f"{self.base}{kind}:{lid}"

    def _pairs(self, ids: Sequence[str]) -> list[str]:
        return [key for lid in ids for key in (self.key("f", lid), self.key("x", lid))]

    def look(self, ids: Sequence[str], now: datetime) -> Mapping[str, Hint]:
        if not ids:
            return {}
        keys = [key for lid in ids for key in (self.key("f", lid), self.key("r", lid))]
        values: list[Any] = self.source._call("read", lambda: self.source._look(keys=keys, args=[self.ttl_ms]), [])
        now_ms, ttl, found = _ms(now), self.ttl_ms, {}
        for lid, full, opens in zip(ids, values[0::2], values[1::2], strict=False):
            # Trusted ttl_ms from its stamp, not long before it (a stamp ahead, set by hand or by a clock ahead,
            # would otherwise be trusted from ttl_ms before it: twice the window). A stamp a little ahead is
            # a fresh one: the workers' clocks agree only so well (a correction may move one back a few ms).
            known_full = _within(full, now_ms - ttl, now_ms + min(_AHEAD_MS, ttl)) is not None
            # Written at most ttl_ms ahead: one further ahead (set by hand, say) is not trusted at all.
            opens_ms = _within(opens, now_ms + 1, now_ms + ttl)
            if known_full or opens_ms is not None:
                found[lid] = Hint(known_full, None if opens_ms is None else _at(opens_ms, now))
        return found

    def saw_full(self, ids: Sequence[str], now: datetime) -> None:
        if ids:
            keys, args = self._pairs(ids), [_ms(now), self.ttl_ms]
            self.source._call("write", lambda: self.source._saw_full(keys=keys, args=args), None)

    def freed(self, ids: Sequence[str], now: datetime) -> None:
        if ids:
            keys, args = self._pairs(ids), [_ms(now), self.ttl_ms]
            self.source._call("write", lambda: self.source._freed(keys=keys, args=args), None)

    def saw_rate(self, lid: str, opens_at: datetime, now: datetime) -> None:
        now_ms = _ms(now)
        opens = min(_ms(opens_at), now_ms + self.ttl_ms)  # a lower bound stays one when lowered
        if opens > now_ms:
            args = [opens, opens - now_ms]
            self.source._call("write", lambda: self.source._saw_rate(keys=[self.key("r", lid)], args=args), None)


def _within(raw: Any, low: int, high: int) -> Optional[int]:
    """A stored ms value if it is an integer in ``[low, high]`` (anything else, set by hand or stale: nothing)."""
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if low <= value <= high else None
