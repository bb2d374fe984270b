"""Workers starting together after a retention change: each tolerates the others' index changes.

The race is forced: every peer reads the collection's indexes before any of
them changes one (a barrier after ``list_indexes``), as when they all start
in the same moment.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo.collection import Collection

pytestmark = pytest.mark.integration

PEERS = 8


@pytest.fixture
def all_read_first(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``arm()``: from now on, each of the PEERS waits after its first read of the indexes until all have read."""
    armed: list[threading.Barrier] = []
    waited: set[int] = set()
    original = Collection.list_indexes

    def list_indexes(self: Collection[Any], *args: Any, **kwargs: Any) -> Any:
        indexes = list(original(self, *args, **kwargs))
        peer = threading.current_thread() is not threading.main_thread()  # the test's own reads pass
        if peer and armed and not armed[0].broken and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            try:
                armed[0].wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
        return iter(indexes)

    monkeypatch.setattr(Collection, "list_indexes", list_indexes)
    return lambda: armed.append(threading.Barrier(PEERS))


def _race(queues: list[Any], action: Any) -> list[BaseException]:
    start = threading.Barrier(len(queues))
    errors: list[BaseException] = []

    def run(queue: Any) -> None:
        try:
            start.wait(timeout=30)
            action(queue)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(q,), daemon=True) for q in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [t for t in threads if t.is_alive()]
    return errors


@pytest.mark.parametrize("rounds", range(3))
def test_peers_applying_a_changed_retention_at_once_all_succeed(make_queue, all_read_first, rounds) -> None:
    make_queue(retention_completed_ms=60_000, retention_failed_ms=60_000).ensure_indexes()
    peers = [make_queue(retention_completed_ms=120_000, retention_failed_ms=None) for _ in range(PEERS)]
    all_read_first()
    assert _race(peers, lambda q: q.ensure_indexes()) == []
    indexes = peers[0].store.indexes.retention_indexes()
    assert indexes["mjq_ttl_completed"]["expireAfterSeconds"] == 120
    assert "mjq_ttl_failed" not in indexes


def test_peers_starting_their_workers_at_once_after_a_change_all_start(make_queue, all_read_first) -> None:
    make_queue(retention_completed_ms=60_000, retention_failed_ms=60_000).ensure_indexes()
    peers = [make_queue(retention_completed_ms=30_000, retention_failed_ms=None) for _ in range(PEERS)]
    for queue in peers:
        queue.register_handler("T", lambda job: None)
    all_read_first()
    assert _race(peers, lambda q: q.start_polling()) == []
    assert all(q.running for q in peers)
    assert peers[0].store.indexes.retention_indexes()["mjq_ttl_completed"]["expireAfterSeconds"] == 30


def test_peers_replacing_an_index_of_another_shape_at_once_all_succeed(make_queue, raw_db, all_read_first) -> None:
    # An index of that name but another filter (say, made by hand): collMod cannot fix it, so drop and create.
    raw_db.jobs.create_index(
        [("finished_at", 1)], name="mjq_ttl_completed", expireAfterSeconds=60, partialFilterExpression={"queue": "x"}
    )
    peers = [make_queue(retention_completed_ms=120_000) for _ in range(PEERS)]
    all_read_first()
    assert _race(peers, lambda q: q.ensure_indexes()) == []
    index = peers[0].store.indexes.retention_indexes()["mjq_ttl_completed"]
    assert (index["expireAfterSeconds"], dict(index["partialFilterExpression"])) == (120, {"status": "completed"})
