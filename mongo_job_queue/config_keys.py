"""The bounds of each config key, and the check of one value against them (:func:`check_key`).

:class:`~mongo_job_queue.config.QueueConfig` runs it for every key at
construction; the checks between keys (the heartbeat against the lease,
a maximum against its base) are the config's own.
"""

from __future__ import annotations

from typing import Any

from .clock import MAX_DURATION_MS
from .errors import ConfigError

__all__ = ["BSON_MAX_BYTES", "MAX_RETRIES", "check_key"]

#: MongoDB's TTL indexes take ``expireAfterSeconds`` as a 32-bit int.
_MAX_TTL_MS = (2**31 - 1) * 1000
#: Counts are stored in (or compared with) 32-bit fields of job documents.
_MAX_COUNT = 2**31 - 1
#: The largest ``max_retries`` anywhere (config, handler, enqueue): it is stored beside ``attempts``.
MAX_RETRIES = _MAX_COUNT

#: MongoDB's document size limit.
BSON_MAX_BYTES = 16 * 1024 * 1024

#: Keys that also accept ``None``, meaning "off" (keep forever, no bound).
_OPTIONAL_INT_KEYS = frozenset({"retention_completed_ms", "retention_failed_ms", "retention_cancelled_ms"})
_BOOL_KEYS = frozenset(
    {"sync_clock", "batch_claims", "batch_acks", "change_stream_wakeups", "run_schedules", "strict_types"}
)
_MINIMUM = {
    # A TTL index counts whole seconds.
    "retention_completed_ms": 1_000,
    "retention_failed_ms": 1_000,
    "retention_cancelled_ms": 1_000,
    "progress_min_interval_ms": 0,
    "max_retries": 0,
    "retry_delay_ms": 0,
    "retry_max_delay_ms": 0,
    "max_error_history": 1,
    # A heartbeat of at most half the lease needs a lease of 2 ms or more.
    "lease_ms": 2,
    "db_timeout_ms": 0,
    "default_time_limit_ms": 0,
}


def check_key(name: str, value: Any) -> None:
    """Refuse ``value`` for config key ``name`` unless it has the key's type and lies within its bounds."""
    if name == "queues":
        _check_queues(value)
    elif name in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be a bool, got {type(value).__name__} {_shown(value)}")
    elif name == "worker_id":
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"config key 'worker_id' must be a non-empty str or None, got {_shown(value)}")
    elif name in _OPTIONAL_INT_KEYS and value is None:
        pass
    else:
        _check_int(name, value, minimum=_MINIMUM.get(name, 1), maximum=_maximum(name))


def _maximum(name: str) -> int:
    if name == "heartbeat_interval_ms":
        # Half the longest lease: set alone, its derived lease (four beats, capped) still holds two of it.
        return MAX_DURATION_MS // 2
    if name.startswith("retention_"):
        return _MAX_TTL_MS
    if name.endswith("_ms"):
        return MAX_DURATION_MS
    if name in ("max_result_bytes", "max_error_chars", "max_traceback_chars"):
        return BSON_MAX_BYTES
    return _MAX_COUNT


def _check_int(name: str, value: Any, *, minimum: int, maximum: int) -> None:
    # bool is an int subclass; "concurrency": True is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config key {name!r} must be an int, got {type(value).__name__} {_shown(value)}")
    if value < minimum:
        raise ConfigError(f"config key {name!r} must be >= {minimum}, got {_shown(value)}")
    if value > maximum:
        raise ConfigError(f"config key {name!r} must be <= {maximum}, got {_shown(value)}")


def _check_queues(value: Any) -> None:
    if isinstance(value, str) or not isinstance(value, tuple) or not value:
        raise ConfigError(f"config key 'queues' must be a non-empty list of queue names, got {_shown(value)}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config key 'queues' holds an invalid queue name: {_shown(name)}")


def _shown(value: Any) -> str:
    """``value`` for an error message: a huge int by its size (its digits would raise ValueError), a long repr cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"
