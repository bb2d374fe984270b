"""Settings that must agree with another one are derived from what the user set, never refused alone."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from mongo_job_queue import ConfigError, QueueConfig
from mongo_job_queue.config import BSON_MAX_BYTES, MAX_DURATION_MS, load_config


def both_ways(**settings: Any) -> list[QueueConfig]:
    """The same settings as a mapping and as a QueueConfig built directly."""
    return [load_config(settings), QueueConfig(**settings)]


@pytest.mark.parametrize("config", both_ways(lease_ms=5_000))
def test_a_short_lease_alone_derives_heartbeat_and_sweep(config: QueueConfig) -> None:
    assert config.lease_ms == 5_000
    assert config.heartbeat_interval_ms == 1_250
    assert config.sweep_interval_ms == 2_500


@pytest.mark.parametrize("config", both_ways(heartbeat_interval_ms=40_000))
def test_a_long_heartbeat_alone_derives_the_lease(config: QueueConfig) -> None:
    assert config.lease_ms == 160_000
    assert config.sweep_interval_ms == 80_000


@pytest.mark.parametrize("heartbeat", [MAX_DURATION_MS // 2, MAX_DURATION_MS // 4 + 1, 45 * 365 * 86_400_000])
def test_the_longest_heartbeat_alone_derives_a_lease_and_sweep_in_bounds(heartbeat: int) -> None:
    for config in both_ways(heartbeat_interval_ms=heartbeat):
        assert config.heartbeat_interval_ms == heartbeat
        assert 2 * heartbeat <= config.lease_ms <= MAX_DURATION_MS
        assert config.sweep_interval_ms == 2 * heartbeat <= MAX_DURATION_MS


def test_a_heartbeat_over_half_the_longest_lease_is_refused_by_its_own_name() -> None:
    with pytest.raises(ConfigError, match=rf"'heartbeat_interval_ms' must be <= {MAX_DURATION_MS // 2}") as info:
        load_config({"heartbeat_interval_ms": MAX_DURATION_MS // 2 + 1})
    assert "lease_ms" not in str(info.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"lease_ms": MAX_DURATION_MS},
        {"poll_interval_base_ms": MAX_DURATION_MS},
        {"poll_interval_max_ms": 1},
        {"retry_delay_ms": MAX_DURATION_MS},
        {"retry_max_delay_ms": 0},
        {"sweep_interval_ms": MAX_DURATION_MS},
    ],
)
def test_every_setting_alone_at_its_bound_is_accepted(settings: dict[str, int]) -> None:
    for config in both_ways(**settings):
        assert config.heartbeat_interval_ms * 2 <= config.lease_ms


@pytest.mark.parametrize("config", both_ways(poll_interval_base_ms=60_000))
def test_a_slow_poll_base_alone_raises_the_poll_maximum(config: QueueConfig) -> None:
    assert config.poll_interval_max_ms == 60_000


@pytest.mark.parametrize("config", both_ways(poll_interval_max_ms=500))
def test_a_fast_poll_maximum_alone_lowers_the_base(config: QueueConfig) -> None:
    assert config.poll_interval_base_ms == 500


@pytest.mark.parametrize("config", both_ways(retry_delay_ms=2 * 3_600_000))
def test_a_long_retry_delay_alone_raises_the_cap(config: QueueConfig) -> None:
    assert config.retry_max_delay_ms == 2 * 3_600_000


@pytest.mark.parametrize("config", both_ways(retry_max_delay_ms=100))
def test_a_low_retry_cap_alone_lowers_the_first_delay(config: QueueConfig) -> None:
    assert config.retry_delay_ms == 100


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"lease_ms": 5_000, "heartbeat_interval_ms": 3_000}, "heartbeat_interval_ms"),
        ({"poll_interval_base_ms": 2_000, "poll_interval_max_ms": 1_000}, "poll_interval_max_ms"),
        ({"retry_delay_ms": 5_000, "retry_max_delay_ms": 4_000}, "retry_max_delay_ms"),
    ],
)
def test_two_values_the_user_set_that_contradict_are_refused(settings: dict[str, int], key: str) -> None:
    for build in (load_config, lambda s: QueueConfig(**s)):
        with pytest.raises(ConfigError, match=repr(key)):
            build(settings)


def test_derived_values_follow_a_replace() -> None:
    """configure_worker() uses dataclasses.replace, which passes every field on."""
    config = QueueConfig()
    shorter = dataclasses.replace(config, lease_ms=8_000)
    assert (shorter.heartbeat_interval_ms, shorter.sweep_interval_ms) == (2_000, 4_000)
    explicit = dataclasses.replace(QueueConfig(lease_ms=10_000, heartbeat_interval_ms=1_000), lease_ms=4_000)
    assert explicit.heartbeat_interval_ms == 1_000  # set by the user: kept, not re-derived
    with pytest.raises(ConfigError, match="'heartbeat_interval_ms'"):
        dataclasses.replace(QueueConfig(heartbeat_interval_ms=15_000), lease_ms=5_000)


def test_derived_config_equals_and_pickles_as_plain_values() -> None:
    config = QueueConfig(lease_ms=5_000)
    assert config == QueueConfig(lease_ms=5_000, heartbeat_interval_ms=1_250, sweep_interval_ms=2_500)
    assert pickle.loads(pickle.dumps(config)) == config
    assert repr(config.heartbeat_interval_ms) == "1250"
    assert QueueConfig() == QueueConfig(heartbeat_interval_ms=15_000, lease_ms=60_000)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lease_ms", 10**16),
        pytest.param("lease_ms", 10**5000, id="lease_ms-10**5000"),
        ("retry_delay_ms", 10**15),
        ("retry_max_delay_ms", 10**15),
        ("heartbeat_interval_ms", MAX_DURATION_MS + 1),
        ("poll_interval_max_ms", 10**15),
        ("clock_sync_interval_ms", 10**15),
        ("retention_completed_ms", 10**15),
        ("max_retries", 2**63),
        ("concurrency", 2**40),
    ],
)
def test_values_that_would_overflow_later_are_refused(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' must be <="):
        load_config({key: value})


def test_limits_leave_room_for_the_job_and_sum_under_the_bson_limit() -> None:
    config = QueueConfig()
    assert config.max_job_bytes + config.reserved_bytes == BSON_MAX_BYTES
    assert config.reserved_bytes > config.max_result_bytes + config.max_error_history * (
        config.max_error_chars + config.max_traceback_chars
    )
    bigger = QueueConfig(max_result_bytes=8 * 1024 * 1024)
    assert bigger.max_job_bytes < config.max_job_bytes
    with pytest.raises(ConfigError, match="max_result_bytes"):
        QueueConfig(max_result_bytes=BSON_MAX_BYTES - 1024)


def test_create_job_queue_accepts_one_changed_setting() -> None:
    from conftest import OrgJob

    from mongo_job_queue import create_job_queue

    queue = create_job_queue(job_model=OrgJob, config={"lease_ms": 5_000})
    assert queue.config.heartbeat_interval_ms * 2 <= queue.config.lease_ms
    queue.configure_worker(lease_ms=2_000)
    assert queue.config.heartbeat_interval_ms == 500
    assert queue.worker.config.heartbeat_interval_ms == 500
