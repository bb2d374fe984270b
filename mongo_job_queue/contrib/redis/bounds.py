"""A copy of a redis-py client whose calls time out after a bound, with no retries (for the limit hints).

redis-py's defaults have no socket timeout and retry 3 times: a frozen
Redis would hold every claim for as long as it is frozen. The copy is a
new pool of the same kind with the same settings (its size, a blocking
pool's wait, a Sentinel's service), so the user's client keeps its own.
"""

from __future__ import annotations

from typing import Any, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

__all__ = ["bounded"]


def bounded(client: Any, timeout_s: float) -> Optional[Any]:
    """A client on a copy of ``client``'s pool whose calls time out after ``timeout_s``; None if it cannot be copied.

    Any :class:`redis.ConnectionPool` (subclasses whose constructor takes
    the base's arguments, :class:`redis.BlockingConnectionPool`, Sentinel's)
    is copied; a cluster client, a test double or a pool with a constructor
    of its own is not.
    """
    pool: Any = getattr(client, "connection_pool", None)
    if not isinstance(pool, redis.ConnectionPool):
        return None
    bounds: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    kwargs = {**pool.connection_kwargs, **bounds}
    for restored in ("orig_socket_timeout", "orig_socket_connect_timeout"):  # what a maintenance window restores
        if restored in kwargs:
            kwargs[restored] = timeout_s
    kwargs["connection_class"] = pool.connection_class
    kwargs["max_connections"] = pool.max_connections
    try:
        if isinstance(pool, SentinelConnectionPool):
            kwargs.pop("connection_pool", None)  # the old pool's proxy: the copy makes its own
            copy: Any = type(pool)(
                pool.service_name,
                pool.sentinel_manager,
                is_master=pool.is_master,
                check_connection=pool.check_connection,
                **kwargs,
            )
        elif isinstance(pool, redis.BlockingConnectionPool):
            copy = type(pool)(timeout=pool.timeout, queue_class=pool.queue_class, **kwargs)
        else:
            copy = type(pool)(**kwargs)
    except TypeError:  # a subclass with a constructor of its own
        return None
    return redis.Redis(connection_pool=copy)
