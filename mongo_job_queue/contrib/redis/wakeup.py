"""Redis pub/sub wake-ups: an enqueue publishes, idle workers subscribed to it wake at once.

For deployments without change streams (a standalone mongod). The channel
is ``<prefix><database>.<jobs collection>``; a message is the JSON list of
the ``[queue, type]`` pairs of the due jobs one enqueue inserted, published
after the insert landed, by a background thread (:mod:`.publisher`): an
enqueue never waits on Redis. A worker's listener wakes its poller for a
pair it claims. Pub/sub keeps nothing: a message sent while a listener is
disconnected (or dropped by a full publisher queue) is lost, so polling
stays on as the fallback, and a listener that reconnects wakes its poller
once for what it may have missed. A worker's ``stop()`` closes its
listeners by shutting their sockets down, so a frozen Redis cannot hold it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Optional

import redis

from .publisher import PAUSE_AFTER_ERROR_S, Publisher, own_client

__all__ = ["PAUSE_AFTER_ERROR_S", "RedisWakeup"]

log = logging.getLogger(__name__)

#: How long one read of the subscription waits: the bound on how late a stop is seen.
_READ_S = 0.2


class RedisWakeup:
    """A :class:`~mongo_job_queue.worker.wakeup.WakeupChannel` on Redis pub/sub: ``queue.add_wakeup(RedisWakeup(r))``.

    Args:
        client: A redis-py client, best with short ``socket_timeout`` and ``socket_connect_timeout``
            (docs/locks.rst); the publisher thread and each listener use connection pools of their own
            with its settings.
        prefix: Channel name prefix.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "mjq:wakeup:") -> None:
        self.client = client
        self.prefix = prefix
        self.publisher = Publisher(client)

    def channel(self, namespace: str) -> str:
        return f"{self.prefix}{namespace}"

    def publish(self, namespace: str, jobs: Sequence[tuple[str, str]]) -> None:
        """Hand the due ``(queue, type)`` pairs to the publisher thread; never blocks, never raises.

        A full queue drops the message; an error is logged and pauses
        publishing for :data:`PAUSE_AFTER_ERROR_S` (polling finds the jobs anyway).
        """
        self.publisher.offer(self.channel(namespace), json.dumps([list(pair) for pair in jobs]))

    def close(self) -> None:
        """Stop the publisher thread at once, even mid-publish on a frozen Redis (a later publish restarts it)."""
        self.publisher.close()

    def listener(
        self,
        namespace: str,
        types: Sequence[str],
        queues: Sequence[str],
        wake: Callable[[], None],
        stopping: threading.Event,
        logger: Optional[logging.Logger],
    ) -> RedisListener:
        return RedisListener(self.client, self.channel(namespace), types, queues, wake, stopping, logger or log)


class RedisListener:
    """One worker start's subscription; :meth:`run` reads until the stop event is set."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        types: Sequence[str],
        queues: Sequence[str],
        wake: Callable[[], None],
        stopping: threading.Event,
        logger: logging.Logger,
    ) -> None:
        self.client = client
        self.name = channel
        self.types = set(types)
        self.queues = set(queues)
        self.wake = wake
        self.stopping = stopping
        self.log = logger
        #: Set while subscribed.
        self.listening = threading.Event()
        self._lock = threading.Lock()
        self._pool: Optional[Any] = None
        self._pubsub: Optional[Any] = None

    def wanted(self, data: Any) -> bool:
        """Whether a message names a ``[queue, type]`` this worker claims (a malformed one wakes it: harmless)."""
        try:
            pairs = json.loads(data)
            return any(queue in self.queues and job_type in self.types for queue, job_type in pairs)
        except (TypeError, ValueError):
            return True

    def run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            client, pool = own_client(self.client)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            with self._lock:
                if self.stopping.is_set():
                    return
                self._pool, self._pubsub = pool, pubsub
            try:
                pubsub.subscribe(self.name)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=_READ_S)
                    if message is None:
                        if not self.listening.is_set() and pubsub.subscribed:
                            self.listening.set()
                            self.wake()  # jobs published while we were not subscribed
                        continue
                    backoff = 0.5
                    if message.get("type") == "message" and self.wanted(message.get("data")):
                        self.wake()
            except Exception as exc:  # noqa: BLE001 - a socket shut down by close() fails in many ways
                self.listening.clear()
                if self.stopping.is_set():
                    return
                self.log.warning(
                    "Redis wake-ups interrupted (%r); resubscribing in %.1fs, polling meanwhile", exc, backoff
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.listening.clear()
                with self._lock:
                    self._pool = self._pubsub = None
                _shut(pool, pubsub)

    def close(self) -> None:
        """End a read from the stopping thread (``stopping`` set first): its socket is shut down.

        A read waits at most 0.2 s, but subscribing and connecting have no
        such bound on a frozen server (SIGSTOP): without this, ``stop()``
        waited its whole timeout.
        """
        with self._lock:
            pool, pubsub = self._pool, self._pubsub
            self._pool = self._pubsub = None
        if pubsub is not None:
            _shut(pool, pubsub, close=False)  # the reading thread closes the subscription itself


def _shut(pool: Optional[Any], pubsub: Any, *, close: bool = True) -> None:
    """Disconnect a subscription's connections (also one still connecting), from any thread."""
    try:
        if pool is not None:
            pool.disconnect()
        elif pubsub.connection is not None:
            pubsub.connection.disconnect()
    except Exception:
        log.debug("closing a Redis subscription failed", exc_info=True)
    if not close:
        return
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - a broken connection: nothing left to close
        pass
