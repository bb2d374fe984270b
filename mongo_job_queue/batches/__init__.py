"""Batches with callbacks: jobs grouped under one id, and callback jobs enqueued once when they end.

::

    service.py  Batches: create, add, seal, get, cancel, retry (what the queue delegates to)
    handle.py   Batch: the app's handle, ``with queue.batch(...) as batch: batch.enqueue(...)``
    tracker.py  BatchTracker: the check after each final write, the callbacks fired once, the reconciler

The batch documents and the counts read from the jobs are
:mod:`mongo_job_queue.store.batches`. See docs/batches.rst for the guarantees.
"""

from __future__ import annotations

from .handle import Batch
from .service import Batches, BatchInfo, Callback, batch_object_id
from .tracker import BatchTracker

__all__ = ["Batch", "BatchInfo", "BatchTracker", "Batches", "Callback", "batch_object_id"]
