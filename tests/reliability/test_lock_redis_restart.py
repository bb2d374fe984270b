"""Redis restarted while its locks are held (``shutdown nosave``, then a new, empty server): tokens still increase.

The restart loses the lock keys and the token counter. The leases that were
held learn it at their next renewal; the next tokens come from a new epoch
taken from MongoDB, so they are greater than every token issued before,
also in a process that never saw the old ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until
from redis_support import RedisServer, fresh_prefix

from mongo_job_queue import LockLost

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[RedisServer]:
    pytest.importorskip("redis", reason="redis-py is not installed (the 'redis' extra)")
    own = RedisServer()
    own.start()
    yield own
    own.stop()


def test_tokens_increase_across_restarts_that_lose_the_data(server, make_queue, job_model) -> None:
    import redis

    from mongo_job_queue.contrib.redis import RedisLocks

    job_model._get_db().drop_collection(f"{job_model._get_collection_name()}_locks")
    queue = make_queue()
    prefix = fresh_prefix()

    def backend() -> Any:
        # A new client and backend each time: as a process that starts after the restart, with no memory of tokens.
        return RedisLocks(redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2), queue, prefix=prefix)

    issued: list[int] = []
    for restart in range(2):
        locks = backend()
        held = [queue.lock(key, ttl_ms=1_000, backend=locks).acquire() for key in ("a", "b", "c")]
        tokens = [lease.token for lease in held]
        assert tokens == sorted(tokens) and len(set(tokens)) == 3
        assert not issued or min(tokens) > max(issued), f"after restart {restart}: {tokens} vs {issued}"
        issued += tokens

        server.shutdown_nosave()
        server.start()

        # The held leases find their keys gone at their next renewal (or run out meanwhile).
        for lease in held:
            wait_until(lambda lease=lease: not lease.held, timeout=10, what=f"lease {lease.key} lost")
            with pytest.raises(LockLost):
                lease.check()
            assert lease.release() is False

    # And after the last restart, through the old backend object as well as a new one.
    for last in (backend(), locks):
        with queue.lock("a", ttl_ms=1_000, backend=last) as lease:
            assert lease.token > max(issued)
            issued.append(lease.token)


def test_a_crash_that_loads_an_older_snapshot_never_repeats_a_token(tmp_path, make_queue, job_model) -> None:
    # Redis's default persistence: periodic RDB snapshots. A crash loses the counter increments made after
    # the last one, so the restarted server would count the same tokens again (failed before run_id was kept).
    import redis

    from mongo_job_queue.contrib.redis import RedisLocks

    server = RedisServer(data_dir=str(tmp_path))
    server.start()
    try:
        job_model._get_db().drop_collection(f"{job_model._get_collection_name()}_locks")
        queue = make_queue()
        prefix = fresh_prefix()
        client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with queue.lock("x", backend=RedisLocks(client, queue, prefix=prefix)) as first:
            pass
        client.save()
        later = [queue.lock("x", backend=RedisLocks(client, queue, prefix=prefix)) for _ in range(3)]
        tokens = [first.token]
        for lock in later:
            with lock as lease:
                tokens.append(lease.token)
        server.crash()
        server.start()
        fresh = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        assert int(fresh.hget(f"{prefix}fence", "n")) == 1  # the snapshot's counter: behind what was issued
        with queue.lock("x", backend=RedisLocks(fresh, queue, prefix=prefix)) as lease:
            assert lease.token > max(tokens), f"{lease.token} repeats one of {tokens}"
    finally:
        server.stop()
