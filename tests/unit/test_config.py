"""Queue configuration: defaults, accepted inputs and every rejection naming its key."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import OrgJob

from mongo_job_queue import ConfigError, QueueConfig, create_job_queue
from mongo_job_queue.config import load_config

BOOL_KEYS = ["sync_clock", "batch_claims", "batch_acks", "change_stream_wakeups", "run_schedules", "strict_types"]
OPTIONAL_INT_KEYS = [f.name for f in dataclasses.fields(QueueConfig) if f.name.startswith("retention_")]
INT_KEYS = [
    f.name
    for f in dataclasses.fields(QueueConfig)
    if f.name not in ("queues", "worker_id", *BOOL_KEYS, *OPTIONAL_INT_KEYS)
]


def test_defaults() -> None:
    config = load_config(None)
    assert config == QueueConfig()
    assert config.max_retries == 3
    assert config.max_attempts == 4
    assert config.retry_delay_ms == 1_000
    assert config.retry_max_delay_ms == 3_600_000
    assert config.poll_interval_base_ms == 1_000
    assert config.poll_interval_max_ms == 30_000
    assert config.concurrency == 8
    assert config.lease_ms == 60_000
    assert config.heartbeat_interval_ms == 15_000
    assert config.sweep_interval_ms == 30_000
    assert config.queues == ("default",)
    assert config.max_error_history == 10
    assert config.max_error_chars == 2_000
    assert config.max_traceback_chars == 8_000
    assert config.db_retry_attempts == 5
    assert config.db_retry_max_delay_ms == 2_000
    assert config.worker_id is None


def test_mapping_is_accepted() -> None:
    config = load_config({"max_retries": 0, "concurrency": 2, "lease_ms": 40_000, "worker_id": "w1"})
    assert isinstance(config, QueueConfig)
    assert (config.max_retries, config.concurrency, config.lease_ms, config.worker_id) == (0, 2, 40_000, "w1")
    assert config.retry_delay_ms == 1_000  # untouched keys keep their default


def test_queue_config_instance_is_accepted_as_is() -> None:
    given = QueueConfig(max_retries=7, queues=("a", "b"))
    assert load_config(given) is given


def test_create_job_queue_applies_mapping_and_config_object() -> None:
    from_mapping = create_job_queue(job_model=OrgJob, config={"max_retries": 5})
    assert from_mapping.config.max_retries == 5
    from_object = create_job_queue(job_model=OrgJob, config=QueueConfig(max_retries=6))
    assert from_object.config.max_retries == 6


def test_unknown_key_is_named_and_valid_keys_listed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"max_retries": 2, "max_retry": 3})
    message = str(info.value)
    assert "'max_retry'" in message
    for key in [*INT_KEYS, "queues", "worker_id", *BOOL_KEYS]:
        assert key in message.split("valid keys are:")[1]


def test_several_unknown_keys_are_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"leaseMs": 1, "pollInterval": 2})
    assert "'leaseMs'" in str(info.value)
    assert "'pollInterval'" in str(info.value)


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("bad", ["5", 5.0, True, None])
def test_int_keys_reject_wrong_types(key: str, bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({key: bad})
    assert repr(key) in str(info.value)
    assert "must be an int" in str(info.value)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("max_retries", -1),
        ("retry_delay_ms", -1),
        ("concurrency", 0),
        ("lease_ms", 0),
        ("heartbeat_interval_ms", 0),
        ("sweep_interval_ms", 0),
        ("poll_interval_base_ms", 0),
        ("max_error_history", 0),
        ("max_error_chars", 0),
        ("db_retry_attempts", 0),
    ],
)
def test_out_of_range_values_name_the_key(key: str, bad: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({key: bad})
    assert repr(key) in str(info.value)
    assert str(bad) in str(info.value)


def test_zero_is_allowed_where_documented() -> None:
    config = load_config({"max_retries": 0, "retry_delay_ms": 0})
    assert (config.max_retries, config.retry_delay_ms) == (0, 0)


def test_heartbeat_longer_than_half_the_lease_is_rejected() -> None:
    assert load_config({"lease_ms": 10_000, "heartbeat_interval_ms": 5_000}).heartbeat_interval_ms == 5_000
    with pytest.raises(ConfigError) as info:
        load_config({"lease_ms": 10_000, "heartbeat_interval_ms": 5_001})
    assert "'heartbeat_interval_ms'" in str(info.value)
    assert "lease_ms" in str(info.value)


def test_poll_interval_max_below_base_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"poll_interval_base_ms": 2_000, "poll_interval_max_ms": 1_999})
    assert "'poll_interval_max_ms'" in str(info.value)


def test_retry_max_delay_below_retry_delay_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"retry_delay_ms": 5_000, "retry_max_delay_ms": 4_000})
    assert "'retry_max_delay_ms'" in str(info.value)


def test_queues_list_becomes_tuple() -> None:
    config = load_config({"queues": ["high", "low"]})
    assert config.queues == ("high", "low")
    assert isinstance(config.queues, tuple)
    assert QueueConfig(queues=["x"]).queues == ("x",)  # the dataclass accepts a list too


@pytest.mark.parametrize("bad", [[], (), "default", ["ok", ""], ["ok", 3], None])
def test_invalid_queues_are_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"queues": bad})
    assert "'queues'" in str(info.value)


@pytest.mark.parametrize("bad", ["", 12])
def test_invalid_worker_id_is_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"worker_id": bad})
    assert "'worker_id'" in str(info.value)


@pytest.mark.parametrize("bad", [["max_retries", 3], "max_retries=3", 42])
def test_non_mapping_config_is_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "mapping" in str(info.value)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        load_config({"nope": 1})


def test_create_job_queue_raises_at_construction() -> None:
    with pytest.raises(ConfigError, match="'concurrency'"):
        create_job_queue(job_model=OrgJob, config={"concurrency": "8"})
    with pytest.raises(ConfigError, match="'polling'"):
        create_job_queue(job_model=OrgJob, config={"polling": True})


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("bad", [1, "yes", None])
def test_bool_keys_must_be_bools(key: str, bad: Any) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' must be a bool"):
        load_config({key: bad})


@pytest.mark.parametrize("key", ["sync_clock", "queues", "worker_id", "concurrency"])
@pytest.mark.parametrize("value", [10**5000, -(10**5000)], ids=["huge", "huge-negative"])
def test_a_huge_int_is_a_config_error_that_names_its_size(key: str, value: int) -> None:
    # Its digits would exceed Python's int-to-str limit: the message once raised ValueError instead.
    with pytest.raises(ConfigError, match="an int of 16610 bits"):
        load_config({key: value})
