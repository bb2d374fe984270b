"""A persistent job queue stored in MongoDB through MongoEngine.

The app defines its job model by subclassing :class:`BaseJob` and registers
its handlers; :func:`create_job_queue` ties the two into a
:class:`PersistentJobQueue` that enqueues, claims atomically, runs handlers in
a thread pool and retries failures with tenacity-driven backoff.
"""

from __future__ import annotations

from ._deprecation import moved as _moved
from .config import QueueConfig
from .errors import (
    ConfigError,
    EagerJobFailed,
    FailJob,
    HandlerError,
    IndexSetupError,
    InvalidJobError,
    InvalidJobIdError,
    JobCancelled,
    JobModelError,
    JobTimeLimitExceeded,
    JobTimeout,
    LeaseExpired,
    LimitError,
    MalformedJob,
    MongoJobQueueError,
    QueueStateError,
    RetryJob,
    ScheduleError,
    Throttled,
    WorkerShutdown,
)
from .limits import Limit
from .middleware import Middleware
from .model import BaseJob, JobError, LeaseOwner
from .queue import PersistentJobQueue, create_job_queue
from .schedules.definition import CatchUp, Schedule
from .schedules.manager import ScheduleInfo
from .schedules.service import Fire
from .status import JobStatus
from .tasks import Task

__version__ = "1.1.0"

__all__ = [
    "BaseJob",
    "CatchUp",
    "ConfigError",
    "EagerJobFailed",
    "FailJob",
    "Fire",
    "HandlerError",
    "IndexSetupError",
    "InvalidJobError",
    "InvalidJobIdError",
    "JobCancelled",
    "JobError",
    "JobModelError",
    "JobStatus",
    "JobTimeLimitExceeded",
    "JobTimeout",
    "LeaseExpired",
    "LeaseOwner",
    "Limit",
    "LimitError",
    "MalformedJob",
    "Middleware",
    "MongoJobQueueError",
    "PersistentJobQueue",
    "QueueConfig",
    "QueueStateError",
    "RetryJob",
    "Schedule",
    "ScheduleError",
    "ScheduleInfo",
    "Task",
    "Throttled",
    "WorkerShutdown",
    "__version__",
    "create_job_queue",
]

# A development tool's error, no longer exported here: mongo_job_queue.dev.embedded has it.
__getattr__ = _moved(__name__, "mongo_job_queue.dev.embedded", ["EmbeddedServerError"])
