"""A frozen Redis (SIGSTOP): enqueues never wait on it, ``stop()`` stays prompt, a lock call fails clearly.

A frozen server is worse than a dead one: the kernel still accepts the
connection, and with redis-py's default (no socket timeout) each read waits
forever. Before the fix an enqueue published on its own thread (blocked for
as long as the server was frozen), and a worker's ``stop()`` waited its
whole timeout for a listener stuck subscribing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers import wait_until
from redis_support import RedisServer, fresh_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
def frozen() -> Iterator[RedisServer]:
    pytest.importorskip("redis", reason="redis-py is not installed (the 'redis' extra)")
    own = RedisServer()
    own.start()
    yield own
    own.stop()


def test_enqueues_do_not_wait_on_a_frozen_redis(frozen, make_queue, job_model) -> None:
    import redis

    from mongo_job_queue.contrib.redis import RedisWakeup

    wakeup = RedisWakeup(redis.Redis(host="127.0.0.1", port=frozen.port), prefix=fresh_prefix())  # no timeouts
    producer = make_queue()
    producer.add_wakeup(wakeup)
    producer.enqueue("A", {})
    frozen.freeze()
    durations: list[float] = []

    def enqueue_many() -> None:
        for _ in range(80):  # more than the publisher's queue holds: the rest are dropped
            started = time.monotonic()
            producer.enqueue("A", {})
            durations.append(time.monotonic() - started)

    thread = threading.Thread(target=enqueue_many, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), f"enqueues blocked on the frozen Redis after {len(durations)} of them"
    assert max(durations) < 1.0, f"an enqueue waited {max(durations):.2f}s on the frozen Redis"
    assert wakeup.publisher.dropped > 0
    assert job_model.objects.count() == 81
    # Closing interrupts the publish stuck on the frozen server (this publisher's thread: another test's may idle).
    publishing = wakeup.publisher._thread
    assert publishing is not None
    started = time.monotonic()
    wakeup.close()
    assert time.monotonic() - started < 2
    assert not publishing.is_alive()


def test_a_worker_listening_on_a_frozen_redis_polls_and_stops_at_once(frozen, make_queue, job_model) -> None:
    import redis

    from mongo_job_queue.contrib.redis import RedisWakeup

    frozen.freeze()  # before the worker subscribes: the subscription waits on the handshake
    worker = make_queue(change_stream_wakeups=False, poll_interval_base_ms=50, poll_interval_max_ms=200)
    worker.add_wakeup(RedisWakeup(redis.Redis(host="127.0.0.1", port=frozen.port), prefix=fresh_prefix()))
    ran = threading.Event()
    worker.register_handler("PING", lambda job: ran.set())
    worker.start_polling()
    make_queue().enqueue("PING", {})
    assert ran.wait(10), "polling did not run the job beside the frozen channel"
    started = time.monotonic()
    assert worker.stop(timeout=20) is True
    took = time.monotonic() - started
    assert took < 3, f"stop() took {took:.1f}s"
    mine = f"mjq-{worker.worker.owner.worker_id}-wakeup"
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(mine) and t.is_alive()],
        timeout=2,
        what="the listener thread ended",
    )


def test_a_lock_call_on_a_frozen_redis_raises_lock_backend_error(frozen, make_queue, job_model) -> None:
    # Before the fix redis-py's own TimeoutError escaped from acquire (after its socket timeout and retries).
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from mongo_job_queue import LockBackendError
    from mongo_job_queue.contrib.redis import RedisLocks

    # As docs/locks.rst advises for a bounded call: a short socket timeout, no retries of redis-py's own.
    client = redis.Redis(
        host="127.0.0.1", port=frozen.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    locks = RedisLocks(client, make_queue(), prefix=fresh_prefix())
    queue = make_queue()
    with queue.lock("warm", backend=locks):
        pass
    frozen.freeze()
    for options in ({"blocking": False}, {"timeout_ms": 200}):
        started = time.monotonic()
        with pytest.raises(LockBackendError, match="socket_timeout"):
            queue.lock("k", backend=locks, **options).acquire()
        assert time.monotonic() - started < 3  # the socket timeout, not timeout_ms: documented
