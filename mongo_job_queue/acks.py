"""Moved to :mod:`mongo_job_queue.worker.completer`; this path keeps working."""

from .worker.completer import AckBuffer

__all__ = ["AckBuffer"]
