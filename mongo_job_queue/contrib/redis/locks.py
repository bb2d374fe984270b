"""Locks on Redis: ``SET NX PX`` and Lua scripts, fencing tokens from ``INCR`` under a MongoDB epoch.

A lock key ``<prefix>lock:<key>`` holds ``"<holder> <epoch> <n>"`` with a
``PX`` expiry, so Redis judges expiry by its own clock. Renewal and release
are Lua scripts that act only if the value is still this lease's.

**Tokens.** One hash ``<prefix>fence`` holds an ``epoch``, a counter
``n`` and the ``run_id`` of the Redis server process that installed the
epoch; the acquire script increments ``n`` only when it takes the lock, in
the same atomic step, and the token is ``epoch << 32 | n``. The epoch comes
from MongoDB (``$inc`` on a document of the queue's ``<jobs>_locks``
collection): whenever the hash is missing or incomplete (a restart that
lost the data set, an eviction, a flush), or was written by another server
process (a restart that loaded an older RDB or AOF, a failover to a replica
that may have missed writes: each has a new ``run_id``), the acquire script
says so, the client takes a new epoch from MongoDB and installs it (only if
it is greater than the one there), and every token after is greater than
any token issued before. Tokens of one Redis namespace are shared by its
keys: they grow per key, and across keys.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional, Union

import redis

from ...errors import LockBackendError
from ...queue import PersistentJobQueue
from ...store.locks import MongoLocks
from ...worker.wakeup import namespace_of

__all__ = ["RedisLocks"]

_COUNTER_BITS = 32

# KEYS: lock, fence hash. ARGV: holder, ttl ms.
# Returns {1, epoch, n} when taken, {0} when held by another holder, {-1} when the fence needs a new epoch:
# it is missing, has no counter, or another server process (run_id) installed it, so its counter may have
# gone back (an older snapshot loaded after a crash, a promoted replica).
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ' ', 1, true)
  if sep and string.sub(current, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    local rest = string.sub(current, sep + 1)
    local sep2 = string.find(rest, ' ', 1, true)
    return {1, string.sub(rest, 1, sep2 - 1), string.sub(rest, sep2 + 1)}
  end
  return {0}
end
local fence = redis.call('HMGET', KEYS[2], 'epoch', 'n', 'run_id')
local epoch = fence[1]
if not epoch or not fence[2] or fence[3] ~= string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') then
  return {-1}
end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
if n >= 4294967296 then
  return {-1}
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch .. ' ' .. n, 'NX', 'PX', ARGV[2])
return {1, epoch, tostring(n)}
"""

# KEYS: fence hash. ARGV: new epoch. Installs it (counter reset, this server's run_id) only if greater than
# the current one.
_INSTALL_EPOCH = """
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if tonumber(ARGV[1]) > current then
  local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'n', 0, 'run_id', run_id)
  return 1
end
return 0
"""

# KEYS: lock. ARGV: value, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock. ARGV: value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lock. ARGV: holder. Frees the key if this holder holds it, under whatever token.
_ABANDON = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ' ', 1, true)
  if sep and string.sub(current, 1, sep - 1) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
"""


@contextmanager
def _answered(what: str) -> Iterator[None]:
    """Redis's timeouts and connection errors as :class:`~mongo_job_queue.LockBackendError`."""
    try:
        yield
    except (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError) as exc:
        raise LockBackendError(
            f"Redis did not answer the lock {what} ({exc!r}); each call is bounded by the client's socket_timeout"
        ) from exc


def _text(value: Union[bytes, str, int]) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLocks:
    """A :class:`~mongo_job_queue.locks.LockBackend` on Redis; its epochs are kept in ``queue``'s MongoDB.

    Args:
        client: A redis-py client (``decode_responses`` either way).
        queue: The queue whose database keeps the token epochs.
        prefix: Redis key prefix; by default ``mjq:{<database>.<jobs collection>/<id>}:``, where ``<id>``
            is the jobs collection's random id (``store.control.instance_id()``, one upsert here): two
            deployments whose databases and collections share names never share a lock. The braces
            keep a lock key and the fence hash its script also touches in one Redis Cluster slot.
    """

    name = "redis"

    def __init__(self, client: redis.Redis, queue: PersistentJobQueue[Any], *, prefix: Optional[str] = None) -> None:
        self.client = client
        self.epochs = MongoLocks(queue.store)
        if prefix is None:
            prefix = f"mjq:{{{namespace_of(queue.store)}/{queue.store.control.instance_id()}}}:"
        self.prefix = prefix
        self.fence_key = f"{self.prefix}fence"
        self._acquire = client.register_script(_ACQUIRE)
        self._install = client.register_script(_INSTALL_EPOCH)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._abandon = client.register_script(_ABANDON)
        self._epoch_lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    @staticmethod
    def _value(holder: str, token: int) -> str:
        return f"{holder} {token >> _COUNTER_BITS} {token & ((1 << _COUNTER_BITS) - 1)}"

    def new_epoch(self, *, seen: Optional[bytes | str] = None) -> None:
        """Take a new epoch from MongoDB and install it in Redis if greater than the one there.

        ``seen`` is the epoch Redis had when the caller decided it needs a
        new one (None: none at all); if another thread of this process
        installed one since, that one serves.
        """
        with self._epoch_lock:
            if self.client.hget(self.fence_key, "epoch") != seen:
                return
            epoch = self.epochs.next_epoch(f"redis:{self.prefix}")
            self._install(keys=[self.fence_key], args=[epoch])

    def acquire(self, key: str, holder: str, ttl_ms: int) -> Optional[int]:
        with _answered("acquire"):
            return self._acquire_token(key, holder, ttl_ms)

    def _acquire_token(self, key: str, holder: str, ttl_ms: int) -> Optional[int]:
        for _ in range(5):
            reply = self._acquire(keys=[self._key(key), self.fence_key], args=[holder, ttl_ms])
            status = int(reply[0])
            if status == 0:
                return None
            if status == -1:
                # The counter is gone (or spent): every later token is greater.
                self.new_epoch(seen=self.client.hget(self.fence_key, "epoch"))
                continue
            # No comparison with tokens seen before: replies of concurrent acquires arrive in any order,
            # and a Redis that went back in time has another run_id, which the script above refuses.
            return (int(_text(reply[1])) << _COUNTER_BITS) | int(_text(reply[2]))
        raise redis.exceptions.RedisError(f"no fencing token from Redis for {key!r} after new epochs")

    def renew(self, key: str, holder: str, token: int, ttl_ms: int) -> bool:
        with _answered("renewal"):
            return int(self._renew(keys=[self._key(key)], args=[self._value(holder, token), ttl_ms])) == 1

    def release(self, key: str, holder: str, token: int) -> bool:
        with _answered("release"):
            return int(self._release(keys=[self._key(key)], args=[self._value(holder, token)])) == 1

    def abandon(self, key: str, holder: str) -> bool:
        with _answered("abandon"):
            return int(self._abandon(keys=[self._key(key)], args=[holder])) == 1
