"""Typed, validated queue configuration.

Keys are snake_case with the unit in the name (``_ms``) so that a mapping read
from a settings file is unambiguous. Validation happens once, at construction:
a typo in a key must fail the deploy, not silently fall back to a default.

Settings that must agree with another one (the heartbeat with the lease, the
poll maximum with its base, the retry cap with the first delay) default to a
value derived from the one the user set, so that changing one setting alone
is never refused; only two values the user set that contradict each other are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .clock import MAX_DURATION_MS
from .config_keys import BSON_MAX_BYTES, MAX_RETRIES, check_key
from .errors import ConfigError

__all__ = ["BSON_MAX_BYTES", "MAX_DURATION_MS", "MAX_RETRIES", "ConfigInput", "Derived", "QueueConfig", "load_config"]

_DAY_MS = 24 * 3600 * 1000
#: One error record beyond its message and traceback: keys, exception type, attempt, time, lease token.
_ERROR_RECORD_OVERHEAD_BYTES = 1024
#: The fields a job document gains besides results and errors: lease, owner, timestamps, progress, cancel flags.
_FIXED_OVERHEAD_BYTES = 64 * 1024
#: The least room the limits must leave for the enqueued job document itself.
_MIN_JOB_BYTES = 64 * 1024


class Derived(int):
    """An int setting derived from another setting rather than set by the user.

    It compares, hashes and computes as the plain int it is. It exists so that
    :func:`dataclasses.replace` (which passes every field on) still knows the
    value was not chosen, and derives it again from the changed settings.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return int.__repr__(self)


@dataclass(frozen=True)
class QueueConfig:
    """Settings of one :class:`~mongo_job_queue.PersistentJobQueue`.

    The ``Attributes`` below are the configuration reference:
    docs/configuration.rst renders them, with each field's default, into its
    table of keys, so a setting is described here and nowhere else.
    Durations are in milliseconds. "When not set" describes a default derived
    from the other setting of a pair that must agree.

    Attributes:
        max_retries: Retries after the first attempt: a job runs at most
            ``max_retries + 1`` times, lease-expiry rescues included. The
            default of jobs enqueued without ``max_retries`` whose handler
            sets none. May be ``0``.
        retry_delay_ms: First retry delay of the default backoff; later
            delays double, plus a random jitter of up to this value. May be
            ``0``. When only ``retry_max_delay_ms`` is set, the smaller of 1 s
            and that cap.
        retry_max_delay_ms: Cap of one default retry delay, at least
            ``retry_delay_ms``. When not set, the larger of 1 hour and
            ``retry_delay_ms``.
        poll_interval_base_ms: Idle poll interval right after work was seen.
            When only ``poll_interval_max_ms`` is set, the smaller of 1 s and
            that maximum.
        poll_interval_max_ms: Idle poll interval reached by doubling while the
            queue stays empty, at least ``poll_interval_base_ms``; it bounds
            the pickup latency of jobs enqueued by other processes when no
            change stream wakes the worker. When not set, the larger of 30 s
            and ``poll_interval_base_ms``.
        concurrency: Handler threads; the worker never holds more claimed
            jobs than this (no prefetch).
        lease_ms: How long a claim stays valid without a heartbeat: a crashed
            worker's jobs are recovered between ``lease_ms`` and ``lease_ms +
            sweep_interval_ms`` after its last heartbeat. When only
            ``heartbeat_interval_ms`` is set, the larger of 60 s and four
            heartbeats.
        heartbeat_interval_ms: How often the leases of running jobs are
            renewed; at most half of ``lease_ms``, so one late heartbeat never
            loses a lease. When not set, a quarter of ``lease_ms``.
        sweep_interval_ms: The longest a job of a crashed or frozen worker
            waits past its lease's expiry before this worker returns it to
            the queue: the sweep sleeps until the earliest lease expiry, at
            most this (``lease_ms`` plus this while idle on a change stream,
            which tells of shorter leases). When not set, twice
            ``heartbeat_interval_ms``.
        queues: Queue names this worker claims from: a non-empty list or
            tuple of non-empty strings.
        max_error_history: Error records kept per job in ``errors``; the
            oldest are dropped.
        max_error_chars: Truncation limit of a stored error message.
        max_traceback_chars: Truncation limit of a stored traceback (its end
            is kept).
        db_retry_attempts: Tries of one database call on transient errors
            (failover, network, timeout).
        db_retry_max_delay_ms: Cap of the wait between those tries.
        db_timeout_ms: Time bound of one try of one database call (pymongo's
            client-side operation timeout, which also sets ``maxTimeMS``), so
            a call on a dead connection fails and is retried instead of
            blocking a heartbeat or a claim. ``0`` (the default) means
            ``min(5000, lease_ms // 2)``. Must be shorter than ``lease_ms``.
        sync_clock: Correct this process's clock by its offset from the
            database server's (``hello.localTime``), so every worker judges
            due times and leases by one clock and a skewed host neither runs
            delayed jobs early nor steals leases. Turn it off only with an
            injected clock (tests).
        batch_claims: Claim up to the number of free threads at once (two
            round trips for k jobs) instead of one job per round trip.
        batch_acks: Write completions by group commit: one bulk write for
            every completion that arrived while the previous one was in
            flight. No timer, so a quiet queue adds no delay.
        change_stream_wakeups: On a replica set, watch for new jobs and wake
            an idle poller at once; polling stays as the fallback, and is all
            a standalone server gets.
        change_stream_max_await_ms: How long one change-stream read waits on
            the server; an idle worker's stream costs one read per interval.
        clock_sync_interval_ms: How often the clock offset of ``sync_clock``
            is measured again (three ``hello`` commands); a host's clock
            drifts by milliseconds a day, so every 10 minutes is plenty.
        hygiene_interval_ms: How often this worker looks for job documents
            damaged by hand edits (unknown status, ill-typed fields) and fails
            them with the reason.
        dependency_sweep_interval_ms: How often this worker re-checks blocked
            jobs (``depends_on``) for a release notice lost to a crash; the
            final write of the last dependency releases them without it.
        retention_completed_ms: How long a ``completed`` job is kept after it
            finished (7 days), by a TTL index; ``None`` keeps it forever. A
            change is applied at the next start; unfinished jobs are never
            removed.
        retention_failed_ms: The same for ``failed`` jobs (30 days).
        retention_cancelled_ms: The same for ``cancelled`` jobs (30 days).
        pause_refresh_ms: How often a worker reads which queues and job types
            are paused, and whether the limit definitions changed (at most
            once per interval, only when about to claim); an idle worker
            whose change stream watches the pause document reads it only
            when the stream says it changed.
        run_schedules: Fire the schedules registered on this queue while its
            worker runs (see :meth:`~mongo_job_queue.PersistentJobQueue.schedule`);
            ``False`` leaves firing to other processes.
        progress_min_interval_ms: Least time between two progress writes of
            one job; reports in between are kept and written by the next
            heartbeat. May be ``0``.
        max_result_bytes: Largest handler result stored (its encoded BSON
            size); a larger or unencodable one is dropped and the reason
            stored in ``result_error``. With the error history it bounds what
            a job document can grow by, so it also bounds the enqueued
            document (:attr:`max_job_bytes`).
        default_time_limit_ms: How long one run may take when neither the
            job nor its handler sets ``time_limit_ms``; past it
            ``JobTimeLimitExceeded`` is raised in the handler. ``0``: none.
        time_limit_grace_ms: How long a handler past its time limit may
            still take to return before it is abandoned (attempt recorded,
            thread replaced, late outcome fenced out).
        strict_types: Refuse (``InvalidJobError``) to enqueue a job type
            that no handler is known for, here or in the worker registry,
            instead of warning once per type.
        worker_id: Name of this worker in ``lease_owner``; random when
            omitted.
    """

    max_retries: int = 3
    retry_delay_ms: int = Derived(1_000)
    retry_max_delay_ms: int = Derived(3_600_000)
    poll_interval_base_ms: int = Derived(1_000)
    poll_interval_max_ms: int = Derived(30_000)
    concurrency: int = 8
    lease_ms: int = Derived(60_000)
    heartbeat_interval_ms: int = Derived(15_000)
    sweep_interval_ms: int = Derived(30_000)
    queues: tuple[str, ...] = ("default",)
    max_error_history: int = 10
    max_error_chars: int = 2_000
    max_traceback_chars: int = 8_000
    db_retry_attempts: int = 5
    db_retry_max_delay_ms: int = 2_000
    db_timeout_ms: int = 0
    sync_clock: bool = True
    batch_claims: bool = True
    batch_acks: bool = True
    change_stream_wakeups: bool = True
    change_stream_max_await_ms: int = 60_000
    clock_sync_interval_ms: int = 600_000
    hygiene_interval_ms: int = 600_000
    dependency_sweep_interval_ms: int = 60_000
    retention_completed_ms: Optional[int] = 7 * _DAY_MS
    retention_failed_ms: Optional[int] = 30 * _DAY_MS
    retention_cancelled_ms: Optional[int] = 30 * _DAY_MS
    pause_refresh_ms: int = 1_000
    run_schedules: bool = True
    progress_min_interval_ms: int = 1_000
    max_result_bytes: int = 1_048_576
    default_time_limit_ms: int = 0
    time_limit_grace_ms: int = 10_000
    strict_types: bool = False
    worker_id: str | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.queues, list):
            object.__setattr__(self, "queues", tuple(self.queues))
        for f in dataclasses.fields(self):
            check_key(f.name, getattr(self, f.name))
        self._derive()
        if self.poll_interval_max_ms < self.poll_interval_base_ms:
            raise ConfigError(
                "config key 'poll_interval_max_ms' must be >= 'poll_interval_base_ms' "
                f"({self.poll_interval_max_ms} < {self.poll_interval_base_ms})"
            )
        if self.retry_max_delay_ms < self.retry_delay_ms:
            raise ConfigError(
                f"config key 'retry_max_delay_ms' must be >= 'retry_delay_ms' "
                f"({self.retry_max_delay_ms} < {self.retry_delay_ms})"
            )
        if self.heartbeat_interval_ms * 2 > self.lease_ms:
            raise ConfigError(
                "config key 'heartbeat_interval_ms' must be at most half of 'lease_ms' "
                f"({self.heartbeat_interval_ms} > {self.lease_ms} / 2), or a single late "
                "heartbeat would let a running job be taken by another worker"
            )
        if self.max_job_bytes < _MIN_JOB_BYTES:
            raise ConfigError(
                "config keys 'max_result_bytes', 'max_error_history', 'max_error_chars' and "
                f"'max_traceback_chars' reserve {self.reserved_bytes} bytes of a job document, leaving "
                f"{self.max_job_bytes} of MongoDB's {BSON_MAX_BYTES} for the job itself; at least "
                f"{_MIN_JOB_BYTES} must remain"
            )
        _check_db_timeout(self)

    def _derive(self) -> None:
        """Fill the settings the user left unset from the ones they set."""

        def given(name: str) -> bool:
            return type(getattr(self, name)) is not Derived

        def put(name: str, value: int) -> None:
            object.__setattr__(self, name, Derived(min(value, MAX_DURATION_MS)))

        if given("lease_ms") and not given("heartbeat_interval_ms"):
            put("heartbeat_interval_ms", max(1, self.lease_ms // 4))
        elif given("heartbeat_interval_ms") and not given("lease_ms"):
            put("lease_ms", max(60_000, 4 * self.heartbeat_interval_ms))
        elif not given("lease_ms"):
            put("lease_ms", 60_000)
            put("heartbeat_interval_ms", 15_000)
        if not given("sweep_interval_ms"):
            put("sweep_interval_ms", 2 * self.heartbeat_interval_ms)
        for low, high, low_default, high_default in (
            ("poll_interval_base_ms", "poll_interval_max_ms", 1_000, 30_000),
            ("retry_delay_ms", "retry_max_delay_ms", 1_000, 3_600_000),
        ):
            if given(low) and not given(high):
                put(high, max(high_default, getattr(self, low)))
            elif given(high) and not given(low):
                put(low, min(low_default, getattr(self, high)))
            elif not given(low):
                put(low, low_default)
                put(high, high_default)

    @property
    def reserved_bytes(self) -> int:
        """Bytes a job document may grow by after enqueue: result, error history, lease and progress.

        ``max_result_bytes``, plus ``result_error`` (``max_error_chars``),
        plus ``max_error_history + 1`` error records (the history and
        ``last_error``) of ``max_error_chars + max_traceback_chars``
        characters, each up to 4 bytes in UTF-8, plus 1 KiB per record
        and 64 KiB for the lease, owner, timestamps and progress.
        """
        record = 4 * (self.max_error_chars + self.max_traceback_chars) + _ERROR_RECORD_OVERHEAD_BYTES
        return (
            self.max_result_bytes
            + 4 * self.max_error_chars
            + (self.max_error_history + 1) * record
            + _FIXED_OVERHEAD_BYTES
        )

    @property
    def max_job_bytes(self) -> int:
        """Largest job document ``enqueue`` accepts, so that it can still grow by :attr:`reserved_bytes`."""
        return BSON_MAX_BYTES - self.reserved_bytes

    @property
    def db_timeout_s(self) -> float:
        """The bound of one database call in seconds: ``db_timeout_ms``, or derived from the lease."""
        ms = self.db_timeout_ms or min(_DB_TIMEOUT_MS, self.lease_ms // 2)
        return max(1, ms) / 1000

    @property
    def max_attempts(self) -> int:
        """The default bound on runs of one job, ``max_retries + 1``."""
        return self.max_retries + 1


# -- db_timeout_ms: the time bound of every database call ----------------------

#: The derived default's cap; a lease shorter than twice this gets half the lease.
_DB_TIMEOUT_MS = 5_000


def _check_db_timeout(config: QueueConfig) -> None:
    # 0 is derived from the lease when used (db_timeout_s), so that
    # dataclasses.replace(config, lease_ms=...) derives it again.
    timeout = config.db_timeout_ms
    if timeout >= config.lease_ms:
        raise ConfigError(
            f"config key 'db_timeout_ms' must be shorter than 'lease_ms' ({timeout} >= {config.lease_ms}): "
            "a heartbeat that may wait that long on a dead connection loses its lease before it is retried"
        )


ConfigInput = Union[QueueConfig, Mapping[str, Any], None]


def load_config(config: ConfigInput, *, base: Optional[QueueConfig] = None) -> QueueConfig:
    """Build a :class:`QueueConfig` from a mapping (of changes to ``base``, if given), a config object or ``None``.

    Raises:
        ConfigError: naming the offending key and, for unknown keys, the valid ones.
    """
    if config is None:
        return QueueConfig()
    if isinstance(config, QueueConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping or a QueueConfig, got {type(config).__name__}")
    valid = [f.name for f in dataclasses.fields(QueueConfig)]
    unknown = sorted(str(k) for k in config if k not in valid)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}; valid keys are: {', '.join(valid)}")
    return QueueConfig(**config) if base is None else dataclasses.replace(base, **config)
