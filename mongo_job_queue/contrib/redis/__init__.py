"""The Redis adapter (extra ``[redis]``, redis-py): locks on Redis and pub/sub wake-ups.

* :class:`RedisLocks`: the lock interface of ``queue.lock()`` on Redis
  (``queue.lock(key, backend=RedisLocks(client, queue))``), with fencing
  tokens that stay monotonic across a Redis restart that loses its data.
* :class:`RedisWakeup`: enqueues publish, idle workers subscribed wake at
  once (``queue.add_wakeup(RedisWakeup(client))``), for deployments without
  change streams.

A Redis lock is for efficiency: correctness needs the fencing token
checked by the write (:func:`mongo_job_queue.locks.fenced_update`).
Importing :mod:`mongo_job_queue` never imports this package, nor redis.
"""

from __future__ import annotations

from ...extras import missing_extra

try:
    import redis  # noqa: F401 - the extra's package: say which extra is missing
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise missing_extra(__name__, "redis-py", "redis", "redis") from exc

from .locks import RedisLocks
from .wakeup import RedisWakeup

__all__ = ["RedisLocks", "RedisWakeup"]
