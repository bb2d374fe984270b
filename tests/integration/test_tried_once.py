"""JobStore.tried_once(): one try for the calls of the block's thread, the store's retries for every other thread.

Two threads share one store, so it runs over the wire (the in-memory mock is not safe for concurrent use).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

pytestmark = pytest.mark.integration


def _failing(tries: list[str], name: str) -> Any:
    def call() -> None:
        tries.append(name)
        raise AutoReconnect("injected")  # transient: the store retries it

    return call


def test_only_the_blocks_thread_gets_one_try(make_queue: Any) -> None:
    # Short waits between the retries; the first call of either thread builds the indexes, before any try is counted.
    store = make_queue(db_retry_max_delay_ms=100).store
    tries: list[str] = []
    inside, other_done = threading.Event(), threading.Event()
    errors: dict[str, BaseException] = {}

    def reader() -> None:
        with store.tried_once():
            inside.set()
            assert other_done.wait(10)  # the other thread retries while this one is inside the block
            try:
                store.retry(_failing(tries, "reader"), "page_read")
            except AutoReconnect as exc:
                errors["reader"] = exc

    def worker() -> None:
        assert inside.wait(10)
        try:
            store.retry(_failing(tries, "worker"), "claim")
        except AutoReconnect as exc:
            errors["worker"] = exc
        other_done.set()

    threads = [threading.Thread(target=reader), threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert set(errors) == {"reader", "worker"}
    assert tries.count("worker") == store.config.db_retry_attempts > 1
    assert tries.count("reader") == 1
    # After the block the thread retries again.
    with pytest.raises(AutoReconnect):
        store.retry(_failing(tries, "after"), "later")
    assert tries.count("after") == store.config.db_retry_attempts
