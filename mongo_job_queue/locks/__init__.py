"""Fenced locks for application code: ``with queue.lock("report:acme") as lease:``.

* :mod:`.lease`: :class:`Lock` (the request) and :class:`Lease` (one
  holding: fencing token, background renewal, check, release);
* :mod:`.backend`: the :class:`LockBackend` protocol that a store
  implements, MongoDB by default
  (:class:`~mongo_job_queue.store.locks.MongoLocks`), Redis in
  :mod:`mongo_job_queue.contrib.redis`;
* :mod:`.fence`: the MongoDB write that checks a token.

See docs/locks.rst for what is guaranteed and what is not.
"""

from __future__ import annotations

from .backend import LockBackend
from .fence import fenced_filter, fenced_update
from .lease import Lease, Lock

__all__ = ["Lease", "Lock", "LockBackend", "fenced_filter", "fenced_update"]
