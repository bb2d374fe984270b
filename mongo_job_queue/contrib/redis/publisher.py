"""Publishing off the enqueue's thread: a bounded queue and one background thread that drops when full.

A wake-up is only a hint (polling finds every job anyway), so an enqueue
must never wait on Redis: a frozen server (SIGSTOP, a stalled VM) with
redis-py's default of no socket timeout would hold each publish forever.
:meth:`Publisher.offer` only puts the message on a small queue; one daemon
thread publishes it, through a connection pool of its own so that
:meth:`Publisher.close` can shut that socket down from another thread and
end a publish stuck on a frozen server. The thread starts with the first
message (again in a forked child) and ends after a while without any.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["MAX_PENDING", "PAUSE_AFTER_ERROR_S", "Publisher", "own_client"]

log = logging.getLogger(__name__)

#: After a failed publish, messages are dropped for this long, in seconds: a Redis that is down
#: must not cost each one a connection timeout.
PAUSE_AFTER_ERROR_S = 5.0
#: Messages waiting for the publisher thread; more are dropped (the next poll finds their jobs).
MAX_PENDING = 64
#: The publisher thread ends after this long without a message, in seconds (the next one starts it again).
_IDLE_S = 5.0


def own_client(client: Any) -> tuple[Any, Optional[Any]]:
    """A client on a connection pool of its own, and that pool (to disconnect from another thread).

    Its connections never retry: a call that :meth:`Publisher.close` cut
    short by shutting its socket down must end, not connect again to a
    frozen server (redis-py 6 and later retry 3 times by default, and 8
    reads a RESP3 handshake on connect, which a frozen server never
    answers). The caller's own loop tries again. Falls back to ``client``
    itself (and None) for a pool that cannot be copied this way (Sentinel, a
    test double): closing then cannot interrupt it.
    """
    pool: Any = getattr(client, "connection_pool", None)
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        return client, None
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
    copy = type(pool)(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=copy), copy


class Publisher:
    """Publishes ``(channel, message)`` pairs in a background thread; :meth:`offer` never blocks."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._pending: queue.Queue[Optional[tuple[str, str]]] = queue.Queue(MAX_PENDING)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0
        self._pool: Optional[Any] = None
        self._closing = threading.Event()  # the current thread's own: a closed thread never resumes
        self._failed = False
        self._pause_until = 0.0
        #: Messages dropped because the queue was full or publishing paused after an error.
        self.dropped = 0

    def offer(self, channel: str, message: str) -> None:
        """Queue a message for the publisher thread, or drop it if the queue is full."""
        self._ensure_thread()
        try:
            self._pending.put_nowait((channel, message))
        except queue.Full:
            self.dropped += 1

    def _ensure_thread(self) -> None:
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if alive:
                return
            if self._pid != os.getpid():
                self._pending = queue.Queue(MAX_PENDING)  # a forked child: the parent's queue had its own thread
            self._closing = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, args=(self._closing,), name="mjq-redis-wakeup-publisher", daemon=True
            )
            self._thread.start()

    def _run(self, closing: threading.Event) -> None:
        client, pool = own_client(self.client)
        with self._lock:
            if not closing.is_set():
                self._pool = pool
        try:
            while not closing.is_set():
                try:
                    item = self._pending.get(timeout=_IDLE_S)
                except queue.Empty:
                    with self._lock:  # idle: end, unless a message came in meanwhile
                        if self._pending.empty() and self._thread is threading.current_thread():
                            self._thread = None
                            return
                    continue
                if item is None or closing.is_set():
                    return
                self._publish(client, closing, *item)
        finally:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            if pool is not None:
                pool.disconnect()

    def _publish(self, client: Any, closing: threading.Event, channel: str, message: str) -> None:
        if time.monotonic() < self._pause_until:
            self.dropped += 1
            return
        try:
            client.publish(channel, message)
            self._failed = False
        except Exception as exc:  # noqa: BLE001 - a hint only; a socket shut down by close() fails in many ways
            if closing.is_set():
                return
            if not self._failed:  # once per outage, not once per enqueue
                log.warning("Redis wake-up not published (%r); workers find the jobs at their next poll", exc)
            self._failed = True
            self._pause_until = time.monotonic() + PAUSE_AFTER_ERROR_S

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread, interrupting a publish in flight; a later :meth:`offer` starts a new one."""
        with self._lock:
            thread, pool = self._thread, self._pool
            self._thread = None
            self._closing.set()
        if thread is None or thread is threading.current_thread():
            return
        try:
            self._pending.put_nowait(None)
        except queue.Full:
            pass
        if pool is not None:
            pool.disconnect()  # shuts the socket down: a read blocked on a frozen server ends at once
        thread.join(timeout)
