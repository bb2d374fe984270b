"""A persistent job queue stored in MongoDB through MongoEngine.

The app defines its job model by subclassing :class:`BaseJob` and registers
its handlers; :func:`create_job_queue` ties the two into a
:class:`PersistentJobQueue` that enqueues, claims atomically, runs handlers in
a thread pool and retries failures with tenacity-driven backoff.
"""

from __future__ import annotations

from ._deprecation import moved as _moved
from .batches import Batch, BatchInfo
from .chunks import ChunkResult, JobOutcome
from .config import QueueConfig
from .errors import (
    BatchSealedError,
    ChunkJobFailed,
    ChunkResultError,
    ConfigError,
    DependencyFailed,
    EagerJobFailed,
    FailJob,
    HandlerError,
    IndexSetupError,
    InvalidBatchError,
    InvalidJobError,
    InvalidJobIdError,
    InvalidLockError,
    JobCancelled,
    JobModelError,
    JobTimeLimitExceeded,
    JobTimeout,
    LeaseExpired,
    LimitError,
    LockBackendError,
    LockLost,
    LockUnavailable,
    MalformedJob,
    MongoJobQueueError,
    QueueStateError,
    RetryJob,
    ScheduleError,
    Throttled,
    WorkerShutdown,
    WorkflowError,
)
from .limits import Limit
from .locks import Lease, Lock, LockBackend, fenced_update
from .middleware import Middleware
from .model import BaseJob, JobError, LeaseOwner
from .queue import PersistentJobQueue, create_job_queue
from .schedules.definition import CatchUp, Schedule
from .schedules.manager import ScheduleInfo
from .schedules.service import Fire
from .status import JobStatus
from .tasks import Task
from .workflows import JobSpec, Workflow, chain, chord, group

__version__ = "1.1.0"

__all__ = [
    "BaseJob",
    "Batch",
    "BatchInfo",
    "BatchSealedError",
    "CatchUp",
    "ChunkJobFailed",
    "ChunkResult",
    "ChunkResultError",
    "ConfigError",
    "DependencyFailed",
    "EagerJobFailed",
    "FailJob",
    "Fire",
    "HandlerError",
    "IndexSetupError",
    "InvalidBatchError",
    "InvalidJobError",
    "InvalidJobIdError",
    "InvalidLockError",
    "JobCancelled",
    "JobError",
    "JobModelError",
    "JobOutcome",
    "JobSpec",
    "JobStatus",
    "JobTimeLimitExceeded",
    "JobTimeout",
    "Lease",
    "LeaseExpired",
    "LeaseOwner",
    "Limit",
    "LimitError",
    "Lock",
    "LockBackend",
    "LockBackendError",
    "LockLost",
    "LockUnavailable",
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
    "Workflow",
    "WorkflowError",
    "__version__",
    "chain",
    "chord",
    "create_job_queue",
    "fenced_update",
    "group",
]

# A development tool's error, no longer exported here: mongo_job_queue.dev.embedded has it.
__getattr__ = _moved(__name__, "mongo_job_queue.dev.embedded", ["EmbeddedServerError"])
