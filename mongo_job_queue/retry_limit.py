"""Which retry bound a job gets: the one given at enqueue, else its handler's, where it runs.

Every job stores ``max_retries``, so any process can read a bound. When the
caller gave none, the stored value is only the enqueuing process's default,
and that process may not have the handler (a web process enqueuing, or
firing a schedule, for dedicated workers), so the job is marked
``max_retries_default``. For a marked job the handler's own ``max_retries``
decides wherever the handler is known: in the worker that runs the job and in
a lease rescuer that has the handler. A rescuer without it does not know the
bound, so it never gives a marked job up (the stored default may be lower than
the handler's): it requeues it, and the worker that has the handler refuses an
attempt past the handler's bound. So a handler runs neither more nor fewer
times than its ``max_retries`` allows, whoever rescues its job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from .errors import FailJob
from .handlers import Handler

__all__ = ["DEFAULT_MARK", "exhausted", "max_retries_of", "rescue_gives_up", "spent_error"]

#: The job field marking a stored ``max_retries`` as a default that the handler's overrides.
DEFAULT_MARK = "max_retries_default"


def max_retries_of(doc: Mapping[str, Any], handler: Optional[Handler]) -> int:
    """The retries after the first attempt that ``doc`` gets, given the handler of its type here (or None)."""
    if doc.get(DEFAULT_MARK) is True and handler is not None and handler.max_retries is not None:
        return handler.max_retries
    return int(doc["max_retries"])


def exhausted(doc: Mapping[str, Any], handler: Optional[Handler]) -> bool:
    """Whether the claimed attempt is past the bound (a rescuer without the handler requeued it)."""
    return int(doc["attempts"]) > max_retries_of(doc, handler) + 1


def spent_error(doc: Mapping[str, Any], handler: Optional[Handler]) -> Optional[FailJob]:
    """The failure to record, without running the handler, for an attempt past its bound (see ``exhausted``)."""
    if not exhausted(doc, handler):
        return None
    return FailJob(f"max_retries={max_retries_of(doc, handler)} of the handler exhausted before this attempt")


def rescue_gives_up(doc: Mapping[str, Any], handler: Optional[Handler]) -> bool:
    """Whether a lease rescuer fails ``doc`` rather than requeue it, given the handler of its type here (or None).

    Without the handler a marked job's bound is unknown here: requeue it, and
    let the worker that has the handler decide (``exhausted``).
    """
    if doc.get(DEFAULT_MARK) is True and handler is None:
        return False
    return int(doc["attempts"]) >= max_retries_of(doc, handler) + 1
