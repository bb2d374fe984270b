"""Turning a handler's exception into a bounded, reference-free error record.

Records keep strings only (type, truncated message and traceback), never the
exception or its frames, so a job retried many times stays small and a
worker that handles thousands of failures does not keep their tracebacks
alive.
"""

from __future__ import annotations

import traceback
from datetime import datetime

from .config import QueueConfig
from .records import ErrorRecord

__all__ = ["error_record", "safe_str", "truncate"]


def safe_str(value: BaseException) -> str:
    # A handler's exception may have a __str__ that raises; the worker must not.
    try:
        return str(value)
    except BaseException:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}>"


def truncate(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut when there is room."""
    if len(text) <= limit:
        return text
    marker = f"...[{len(text) - limit} chars truncated]..."
    if limit <= len(marker):
        return text[-limit:] if keep_tail else text[:limit]
    keep = limit - len(marker)
    return marker + text[len(text) - keep :] if keep_tail else text[:keep] + marker


def error_record(
    exc: BaseException, *, attempt: int, at: datetime, token: str | None, config: QueueConfig
) -> ErrorRecord:
    """Turn an exception into a bounded, reference-free record (no frames kept alive)."""
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # noqa: BLE001 - str() of the exception may raise inside
        tb = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: <unprintable>"
    return ErrorRecord(
        type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        message=truncate(safe_str(exc), config.max_error_chars),
        traceback=truncate(tb, config.max_traceback_chars, keep_tail=True),
        attempt=attempt,
        at=at,
        lease_token=token,
    )
