"""The naming rules both metric sources share: one prefix, and a cap on free-form label values."""

from __future__ import annotations

__all__ = ["MAX_LABEL_VALUES", "OTHER", "PREFIX"]

#: The one prefix of every metric name.
PREFIX = "mongo_job_queue"

#: Distinct values a ``queue`` or ``job_type`` label takes at most, by default (per registry and process).
MAX_LABEL_VALUES = 100
#: The label value of the queues and job types beyond the cap.
OTHER = "__other__"
