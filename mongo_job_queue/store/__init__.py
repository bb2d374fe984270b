"""The store: the one handle on a queue's jobs collection (:class:`JobStore`) and its components.

::

    JobStore (handle.py)   model, config, fork-safe collection, server clock, bounded(), retry()
      .jobs     jobs.py    insert; claims.py claim; leases.py heartbeat; outcomes.py fenced outcomes;
                           recovery.py lease recovery and quarantine; strays.py the leases of claims
                           whose reply was lost; keyed_insert.py the insert of a unique or fired job
                           when the model declares a shard key
      .control  control.py pause and schedule state (the control collection), cancel requests
      .admin    admin.py   stats, purge, retry, find, malformed documents
      .indexes  indexes.py model indexes (before the first use) and retention TTL indexes;
                           index_specs.py the declared indexes and how an existing one differs
      .workers  workers.py the worker registry (``<jobs>_workers``), one heartbeat document per worker
      .finals   finals.py  the notice of final writes, for batches and dependent jobs
      .dependencies dependencies.py blocked jobs, released by their dependencies' final writes
      .batches  batches.py batch documents (``<jobs>_batches``) and a batch's counts from its jobs
      .limits   limiter.py limits and mutex keys (``<jobs>_limits``, ``<jobs>_limiters``), admitted in the claim
                           (limited_claims.py; holders.py the concurrency slots; rates.py the GCRA of
                           rate limits; limit_defs.py the stored definitions, announced through the
                           pause document's version; limiter_sweep.py the deletion of idle limiters)
      .keys     keys.py    with a declared shard key, the key documents (``<jobs>_keys``) that keep
                           unique jobs and fires single: backfill, sweep, the non-unique indexes
    Listing     listing.py the command line's job listings by filter (built with a handle when needed)

faults.py reads database errors (transient, too large, which unique index);
marks.py is how a retried write recognises its own earlier try; fork.py
keeps clients from crossing ``fork()``.
"""

from __future__ import annotations

from .admin import Admin
from .control import Control, PauseState, ScheduleState, schedule_state_id
from .faults import duplicate_field, is_too_large, is_transient
from .handle import JobStore
from .indexes import Indexes, retention_index_name
from .jobs import Jobs
from .leases import ClaimedJob, Heartbeat
from .outcomes import UnstorableResult

__all__ = [
    "Admin",
    "ClaimedJob",
    "Control",
    "Heartbeat",
    "Indexes",
    "JobStore",
    "Jobs",
    "PauseState",
    "ScheduleState",
    "UnstorableResult",
    "duplicate_field",
    "is_too_large",
    "is_transient",
    "retention_index_name",
    "schedule_state_id",
]
