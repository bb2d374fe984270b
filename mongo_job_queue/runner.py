"""Moved to :mod:`mongo_job_queue.worker.runner`; this path keeps working."""

from .worker.runner import EXIT_FORCED, EXIT_OK, run_worker

__all__ = ["EXIT_FORCED", "EXIT_OK", "run_worker"]
