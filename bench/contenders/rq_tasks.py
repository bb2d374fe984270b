"""The job function of the RQ contender, imported by its worker processes.

RQ's workers are separate processes, so a job reports that it ran with one
Redis ``INCR`` on its batch's counter (one extra round trip to Redis per
job), which the bench polls.
"""

from __future__ import annotations

from rq import get_current_job


def noop(counter_key: str) -> None:
    job = get_current_job()
    assert job is not None
    job.connection.incr(counter_key)
