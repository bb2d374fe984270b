"""Deadlines that may be infinite: "wait forever" is a valid stop timeout.

``Thread.join`` and ``Condition.wait`` raise ``OverflowError`` above
``threading.TIMEOUT_MAX``; every wait of the worker goes through here, in
slices, so ``None``, ``inf`` and ``1e10`` all mean "wait until done".
"""

from __future__ import annotations

import math
import threading
import time
from typing import Optional

__all__ = ["deadline_after", "join", "remaining"]

#: The longest single wait; longer waits are taken in slices of this.
_SLICE = 1.0


def deadline_after(timeout: Optional[float]) -> float:
    """A ``time.monotonic()`` deadline; ``None`` and ``inf`` give ``inf``."""
    if timeout is None or math.isnan(timeout):
        return math.inf
    return time.monotonic() + max(0.0, timeout)


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (``inf`` for an infinite one), never negative."""
    return max(0.0, deadline - time.monotonic())


def join(thread: threading.Thread, deadline: float, force: Optional[threading.Event] = None) -> bool:
    """Join ``thread`` until ``deadline`` or until ``force`` is set; True if it ended."""
    while thread.is_alive():
        left = remaining(deadline)
        if left <= 0 or (force is not None and force.is_set()):
            break
        thread.join(min(left, _SLICE if force is not None else threading.TIMEOUT_MAX, threading.TIMEOUT_MAX))
    return not thread.is_alive()
