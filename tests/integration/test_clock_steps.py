"""A step of the host's wall clock (NTP, a date set by hand) is corrected at once, not at the next clock sync."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration


def server_time(raw_db) -> datetime:
    return raw_db.client.admin.command("hello")["localTime"].replace(tzinfo=None)


@pytest.mark.parametrize("step_s", [30, -30], ids=["forward", "backward"])
def test_a_wall_clock_step_between_syncs_is_measured_again(make_queue, raw_db, step_s: int) -> None:
    step = [timedelta(0)]
    # Syncs ten minutes apart (the default): only the step can make the store measure again.
    queue = make_queue(clock=lambda: utcnow() + step[0], clock_sync_interval_ms=600_000)
    store = queue.store
    store._watch_steps = True  # the host's own clock is watched; this one stands for it, and steps
    assert abs(store.now() - server_time(raw_db)) < timedelta(seconds=1)
    hellos = []
    real_hello = store._hello

    def counted() -> object:
        hellos.append(1)
        return real_hello()

    store._hello = counted  # type: ignore[method-assign]
    store.now()
    assert hellos == []  # no step, no measurement
    step[0] = timedelta(seconds=step_s)
    # The first look after the step measures again: leases and due times keep the server's clock.
    assert abs(store.now() - server_time(raw_db)) < timedelta(seconds=1)
    assert hellos
    measured = len(hellos)
    store.now()
    assert len(hellos) == measured  # once per step, not at every call


def test_an_injected_clock_is_not_watched(make_queue) -> None:
    """A test's clock may jump on purpose (advance a lease past its expiry): that is no step to correct."""
    queue = make_queue(clock=lambda: utcnow())
    assert queue.store._watch_steps is False


def test_the_hosts_own_clock_is_watched(job_model) -> None:
    from mongo_job_queue import create_job_queue

    assert create_job_queue(job_model=job_model).store._watch_steps is True
