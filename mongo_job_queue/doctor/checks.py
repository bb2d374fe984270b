"""The result of one doctor check: its status, what it found and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FAIL", "PASS", "STATUSES", "WARN", "Check"]

PASS = "pass"
#: Works, but costs or risks something the operator should know about; the exit code stays 0.
WARN = "warn"
#: The queue's guarantees do not hold on this deployment; the exit code is non-zero.
FAIL = "fail"
STATUSES = (PASS, WARN, FAIL)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: str
    #: What was found.
    detail: str
    #: What to do about it (empty on a pass that needs nothing).
    action: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The check as ``--json`` prints it."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "action": self.action}
