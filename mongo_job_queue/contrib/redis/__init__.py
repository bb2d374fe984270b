"""The Redis adapter (extra ``[redis]``, redis-py): locks on Redis, pub/sub wake-ups and limit pre-checks.

* :class:`RedisLocks`: the lock interface of ``queue.lock()`` on Redis
  (``queue.lock(key, backend=RedisLocks(client, queue))``), with fencing
  tokens that stay monotonic across a Redis restart that loses its data.
* :class:`RedisWakeup`: enqueues publish, idle workers subscribed wake at
  once (``queue.add_wakeup(RedisWakeup(client))``), for deployments without
  change streams.
* :class:`RedisLimitHints`: claims skip the MongoDB round trips of a limiter
  known full or a rate known closed (``queue.add_limit_hints(RedisLimitHints(client))``);
  MongoDB stays the only admission.

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

from .hints import RedisLimitHints
from .locks import RedisLocks
from .wakeup import RedisWakeup

__all__ = ["RedisLimitHints", "RedisLocks", "RedisWakeup"]
