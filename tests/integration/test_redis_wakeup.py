"""Redis pub/sub wake-ups: a job enqueued by another process's queue wakes an idle worker at once, polls aside."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import holds_for, wait_until
from redis_support import fresh_prefix, shared_client

pytestmark = pytest.mark.integration

SLOW_POLLS = {"poll_interval_base_ms": 20_000, "poll_interval_max_ms": 20_000, "change_stream_wakeups": False}


@pytest.fixture
def wakeup() -> Any:
    from mongo_job_queue.contrib.redis import RedisWakeup

    return RedisWakeup(shared_client(), prefix=fresh_prefix())


def test_an_enqueue_elsewhere_wakes_the_idle_worker_at_once(make_queue, job_model, wakeup) -> None:
    worker = make_queue(**SLOW_POLLS)
    worker.add_wakeup(wakeup)
    done: dict[str, float] = {}
    finished = threading.Event()

    @worker.handler("PING")
    def ping(job: Any) -> None:
        done[job.data["name"]] = time.monotonic()
        finished.set()

    worker.start_polling()
    wait_until(lambda: worker.worker.listening_for_jobs, timeout=10, what="the worker subscribed")
    # The poller's first poll found nothing: it now waits 20 s for the next one.
    wait_until(lambda: worker.worker._idle.is_set(), timeout=10, what="the poller idle")

    # A producer without the channel: the idle worker sleeps through its job (the control).
    silent = make_queue()
    silent.enqueue("PING", {"name": "unannounced"})
    holds_for(lambda: "unannounced" not in done, duration=1.0, what="no wake-up without the channel")

    producer = make_queue()
    producer.add_wakeup(wakeup)
    started = time.monotonic()
    producer.enqueue("PING", {"name": "announced"})
    wait_until(lambda: "announced" in done, timeout=5, what="the announced job ran")
    assert done["announced"] - started < 3  # a wake-up, not the 20 s poll
    # The wake-up claims whatever is due, so the control job ran with it.
    wait_until(lambda: "unannounced" in done, timeout=5)


def test_a_delayed_job_is_not_announced_and_redis_down_never_fails_an_enqueue(make_queue, job_model) -> None:
    redis = pytest.importorskip("redis")
    from mongo_job_queue.contrib.redis import RedisWakeup

    published: list[Any] = []
    spy = type("Spy", (), {"publish": lambda self, channel, message: published.append(message)})()
    wakeup = RedisWakeup(spy, prefix=fresh_prefix())
    producer = make_queue()
    producer.add_wakeup(wakeup)
    producer.enqueue("LATER", {}, delay_ms=60_000)
    producer.enqueue_many([{"job_type": "A", "data": {}}, {"job_type": "A", "data": {}, "queue": "other"}])
    wait_until(lambda: published, timeout=5, what="the publisher thread published")
    assert published == ['[["default", "A"], ["other", "A"]]']  # the delayed job was not announced
    wakeup.close()

    down = RedisWakeup(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), prefix=fresh_prefix())
    producer.add_wakeup(down)
    job = producer.enqueue("A", {})
    assert producer.get_job(job.id) is not None
    # Later enqueues skip the publish for a while: a Redis that is down does not slow each one down.
    started = time.monotonic()
    for _ in range(5):
        producer.enqueue("A", {})
    assert time.monotonic() - started < 1.0


def test_the_listener_wakes_only_for_its_queues_and_types(wakeup) -> None:
    listener = wakeup.listener("db.jobs", ["A"], ["default"], lambda: None, threading.Event(), None)
    assert listener.wanted('[["default", "A"]]')
    assert not listener.wanted('[["default", "B"]]')
    assert not listener.wanted('[["other", "A"]]')
    assert listener.wanted("not json")  # a wake-up too many costs one poll


def test_beside_the_change_stream_both_listen_and_a_stop_ends_them_promptly(make_queue, job_model, wakeup) -> None:
    worker = make_queue(poll_interval_base_ms=20_000, poll_interval_max_ms=20_000)  # change streams on too
    worker.add_wakeup(wakeup)
    ran = threading.Event()
    worker.register_handler("PING", lambda job: ran.set())
    worker.start_polling()
    waker = worker.worker._waker
    assert waker is not None and len(waker.wakers) == 2
    wait_until(lambda: all(w.listening.is_set() for w in waker.wakers), timeout=10, what="both listeners up")
    wait_until(lambda: worker.worker._idle.is_set(), timeout=10, what="the poller idle")
    producer = make_queue()
    producer.add_wakeup(wakeup)
    producer.enqueue("PING", {})
    assert ran.wait(5)
    started = time.monotonic()
    assert worker.stop(timeout=10) is True
    assert time.monotonic() - started < 5
    mine = f"mjq-{worker.worker.owner.worker_id}-wakeup"
    assert not [t.name for t in threading.enumerate() if t.name.startswith(mine) and t.is_alive()]
