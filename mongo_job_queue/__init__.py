"""A persistent job queue stored in MongoDB through MongoEngine.

The app defines its job model by subclassing :class:`BaseJob` and registers
its handlers; :func:`create_job_queue` ties the two into a
:class:`PersistentJobQueue` that enqueues, claims atomically, runs handlers in
a thread pool and retries failures with tenacity-driven backoff.
"""

from __future__ import annotations

from .config import QueueConfig
from .errors import (
    ConfigError,
    EagerJobFailed,
    EmbeddedServerError,
    FailJob,
    HandlerError,
    InvalidJobError,
    JobCancelled,
    JobModelError,
    JobTimeout,
    LeaseExpired,
    MalformedJob,
    MongoJobQueueError,
    QueueStateError,
    RetryJob,
    WorkerShutdown,
)
from .middleware import Middleware
from .model import BaseJob, JobError, JobStatus, LeaseOwner
from .queue import PersistentJobQueue, create_job_queue

__version__ = "1.0.0"

__all__ = [
    "BaseJob",
    "ConfigError",
    "EagerJobFailed",
    "EmbeddedServerError",
    "FailJob",
    "HandlerError",
    "InvalidJobError",
    "JobCancelled",
    "JobError",
    "JobModelError",
    "JobStatus",
    "JobTimeout",
    "LeaseExpired",
    "LeaseOwner",
    "MalformedJob",
    "Middleware",
    "MongoJobQueueError",
    "PersistentJobQueue",
    "QueueConfig",
    "QueueStateError",
    "RetryJob",
    "WorkerShutdown",
    "__version__",
    "create_job_queue",
]
