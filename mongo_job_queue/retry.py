"""Retry policy as data: tenacity strategies evaluated against persisted attempts.

A worker process does not loop in memory while a job waits for its retry: the
failed attempt is written back as ``pending`` with a future ``run_at``, so a
retry survives restarts and any worker may take it. tenacity supplies the
decision (``retry``), the give-up rule (``stop``) and the delay (``wait``); we
feed them a :class:`tenacity.RetryCallState` rebuilt from the job document.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

import tenacity
from tenacity import RetryCallState, stop_after_attempt, wait_exponential, wait_random

from .clock import MAX_DURATION_MS
from .config import QueueConfig
from .errors import FailJob, HandlerError, RetryJob

__all__ = ["RetryDecision", "RetryPolicy", "clamp_delay_ms", "retry_any_exception"]

log = logging.getLogger(__name__)

StopStrategy = Callable[[RetryCallState], bool]
WaitStrategy = Callable[[RetryCallState], float]
RetryStrategy = Callable[[RetryCallState], bool]


class _retry_any(tenacity.retry_base):
    """Retry on every exception, BaseException included: a handler's crash is an attempt."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.outcome is not None and retry_state.outcome.failed


retry_any_exception = _retry_any()


@dataclass(frozen=True)
class RetryDecision:
    """Outcome of evaluating a failure: retry after ``delay_ms``, or give up."""

    retry: bool
    delay_ms: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """The tenacity strategies for one job type.

    ``stop`` is always combined with ``stop_after_attempt(max_retries + 1)``
    from the job document, so a custom ``stop`` can end retries earlier but
    never run a job more often than its persisted ``max_retries`` allows (lease
    rescues, which no handler sees, count against the same bound).
    """

    stop: Optional[StopStrategy] = None
    wait: Optional[WaitStrategy] = None
    retry: Optional[RetryStrategy] = None

    def __post_init__(self) -> None:
        for name in ("stop", "wait", "retry"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise HandlerError(f"{name}= must be a tenacity strategy (callable), got {value!r}")

    @classmethod
    def default_wait(cls, config: QueueConfig) -> WaitStrategy:
        """``retry_delay_ms * 2**(n-1)`` plus up to ``retry_delay_ms`` of jitter, capped at ``retry_max_delay_ms``."""
        base = config.retry_delay_ms / 1000
        cap = config.retry_max_delay_ms / 1000
        # tenacity adds the jitter after the cap; cap the sum again in decide().
        return wait_exponential(multiplier=base, max=cap) + wait_random(0, base)

    def decide(
        self,
        exc: BaseException,
        *,
        attempts: int,
        max_retries: int,
        enqueued_at: datetime | None,
        now: datetime,
        config: QueueConfig,
    ) -> RetryDecision:
        """Decide what to do after attempt number ``attempts`` raised ``exc``.

        Never raises: the worker writes the decision back while it holds the
        job, and a decision that failed would leave the job ``processing``. A
        strategy that raises is logged and the default policy decides instead;
        every delay is clamped to ``[0, MAX_DURATION_MS]``.
        """
        if isinstance(exc, FailJob):
            return RetryDecision(False, reason="handler raised FailJob")
        state = _call_state(exc, attempts=attempts, enqueued_at=enqueued_at, now=now)
        if stop_after_attempt(max_retries + 1)(state):
            return RetryDecision(False, reason=f"max_retries={max_retries} exhausted")
        try:
            return self._decide(exc, state, config)
        except Exception:
            log.exception("retry strategy raised; retrying %s with the default backoff", type(exc).__name__)
            return RetryPolicy().decide(
                exc, attempts=attempts, max_retries=max_retries, enqueued_at=enqueued_at, now=now, config=config
            )

    def _decide(self, exc: BaseException, state: RetryCallState, config: QueueConfig) -> RetryDecision:
        # RetryJob is an explicit request: the retry= predicate does not filter it.
        if not isinstance(exc, RetryJob) and not (self.retry or retry_any_exception)(state):
            return RetryDecision(False, reason="retry policy declined this exception")
        if self.stop is not None and self.stop(state):
            return RetryDecision(False, reason="stop policy reached")
        if isinstance(exc, RetryJob):
            return RetryDecision(True, clamp_delay_ms(exc.delay_ms), reason="handler raised RetryJob")
        wait = self.wait or self.default_wait(config)
        seconds = float(wait(state))
        if math.isnan(seconds):
            raise ValueError(f"wait strategy {wait!r} returned NaN")
        if self.wait is None:
            seconds = min(seconds, config.retry_max_delay_ms / 1000)
        return RetryDecision(True, clamp_delay_ms(seconds * 1000), reason="retry policy")


def clamp_delay_ms(ms: float) -> int:
    """A computed delay as whole milliseconds in ``[0, MAX_DURATION_MS]``; ``inf`` becomes the maximum."""
    if isinstance(ms, int):  # exact, and an int too large for a float must not raise
        return max(0, min(MAX_DURATION_MS, ms))
    if math.isnan(ms):
        raise ValueError("delay is NaN")
    return int(max(0.0, min(float(MAX_DURATION_MS), ms)))


def _call_state(exc: BaseException, *, attempts: int, enqueued_at: datetime | None, now: datetime) -> RetryCallState:
    # tenacity measures elapsed time with time.monotonic(); shift start_time so
    # that stop_after_delay sees the time since the job was enqueued, which
    # may have happened in another process days ago.
    state = RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempts)
    outcome = tenacity.Future(state.attempt_number)
    outcome.set_exception(exc)
    mono = time.monotonic()
    elapsed = max(0.0, (now - enqueued_at).total_seconds()) if enqueued_at else 0.0
    state.outcome = outcome
    state.outcome_timestamp = mono
    state.start_time = mono - elapsed
    return state
