"""Redis pub/sub wake-ups: an enqueue publishes, idle workers subscribed to it wake at once.

For deployments without change streams (a standalone mongod). The channel
is ``<prefix><database>.<jobs collection>``; a message is the JSON list of
the ``[queue, type]`` pairs of the due jobs one enqueue inserted, published
after the insert landed. A worker's listener wakes its poller for a pair
it claims. Pub/sub keeps nothing: a message sent while a listener is
disconnected is lost, so polling stays on as the fallback, and a listener
that reconnects wakes its poller once for what it may have missed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import redis

__all__ = ["PAUSE_AFTER_ERROR_S", "RedisWakeup"]

log = logging.getLogger(__name__)

#: How long enqueues skip publishing after a failed publish, in seconds.
PAUSE_AFTER_ERROR_S = 5.0
#: How long one read of the subscription waits: the bound on how late a stop is seen.
_READ_S = 0.2


class RedisWakeup:
    """A :class:`~mongo_job_queue.worker.wakeup.WakeupChannel` on Redis pub/sub: ``queue.add_wakeup(RedisWakeup(r))``.

    Args:
        client: A redis-py client; publishing uses it, each listener opens its own subscription.
        prefix: Channel name prefix.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "mjq:wakeup:") -> None:
        self.client = client
        self.prefix = prefix
        self._failed = False
        #: After a failed publish, enqueues skip publishing until then (monotonic): a Redis that is
        #: down must not add its connection timeout and retries to every enqueue.
        self._pause_until = 0.0

    def channel(self, namespace: str) -> str:
        return f"{self.prefix}{namespace}"

    def publish(self, namespace: str, jobs: Sequence[tuple[str, str]]) -> None:
        """Publish the due ``(queue, type)`` pairs; an error is logged (polling finds the jobs anyway).

        After an error, publishing pauses for :data:`PAUSE_AFTER_ERROR_S`.
        """
        if time.monotonic() < self._pause_until:
            return
        try:
            self.client.publish(self.channel(namespace), json.dumps([list(pair) for pair in jobs]))
            self._failed = False
        except redis.exceptions.RedisError as exc:
            if not self._failed:  # once per outage, not once per enqueue
                log.warning("Redis wake-up not published (%r); workers find the jobs at their next poll", exc)
            self._failed = True
            self._pause_until = time.monotonic() + PAUSE_AFTER_ERROR_S

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
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
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
            except (redis.exceptions.RedisError, OSError) as exc:
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
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - a broken connection: nothing left to close
                    pass

    def close(self) -> None:
        """Nothing to interrupt: each read waits at most 0.2 s and sees the stop event."""
