"""Moved to :mod:`mongo_job_queue.worker.wakeup`; this path keeps working."""

from .worker.wakeup import ChangeStreamWaker

__all__ = ["ChangeStreamWaker"]
