"""``db_timeout_ms``: its default follows the lease, and a timeout counts as transient, never as a lost lease."""

from __future__ import annotations

import dataclasses

import pytest
from pymongo.errors import (
    BulkWriteError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WTimeoutError,
)

from mongo_job_queue import ConfigError, QueueConfig
from mongo_job_queue.store import is_transient


def test_the_default_bound_is_a_few_seconds_and_shorter_than_the_lease() -> None:
    assert QueueConfig().db_timeout_s == 5.0
    assert QueueConfig(lease_ms=3_000, heartbeat_interval_ms=500).db_timeout_s == 1.5


def test_the_derived_bound_follows_a_lease_changed_later() -> None:
    config = dataclasses.replace(QueueConfig(), lease_ms=2_000, heartbeat_interval_ms=500)
    assert config.db_timeout_s == 1.0


def test_an_explicit_bound_is_used_and_must_be_shorter_than_the_lease() -> None:
    assert QueueConfig(db_timeout_ms=800).db_timeout_s == 0.8
    with pytest.raises(ConfigError, match="db_timeout_ms"):
        QueueConfig(db_timeout_ms=60_000)
    with pytest.raises(ConfigError, match="db_timeout_ms"):
        QueueConfig(db_timeout_ms=-1)
    with pytest.raises(ConfigError, match="db_timeout_ms"):
        QueueConfig(db_timeout_ms=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="db_timeout_ms"):
        QueueConfig(db_timeout_ms="5s")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        NetworkTimeout("timed out"),
        ExecutionTimeout("operation exceeded time limit", code=50),
        OperationFailure("operation exceeded time limit", code=50),
        ServerSelectionTimeoutError("no server"),
        WaitQueueTimeoutError("pool full"),
        WTimeoutError("waiting for replication timed out", code=64),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 50, "errmsg": "time limit"}], "writeConcernErrors": []}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_timeout_is_transient(exc: Exception) -> None:
    assert exc.timeout  # type: ignore[attr-defined]
    assert is_transient(exc)


def test_a_rejected_write_is_still_not_transient() -> None:
    assert not is_transient(OperationFailure("bad update", code=14))
    assert not is_transient(BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}], "writeConcernErrors": []}))
