"""What a forked child renews: the parent's threads do not exist there, and a lock one of them held stays held.

Objects with such state call :func:`renew_in_child` once; in every child
forked while they live, their ``_after_fork_in_child()`` runs, in the order
the objects registered (a queue's handler registry before its worker). The
store's connections have a hook of their own (:mod:`mongo_job_queue.store.fork`).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["Renewable", "renew_in_child"]


class Renewable(Protocol):
    def _after_fork_in_child(self) -> None: ...


# A dict keeps the order of registration; weak keys let the objects go.
_live: weakref.WeakKeyDictionary[Renewable, None] = weakref.WeakKeyDictionary()


def renew_in_child(obj: Renewable) -> None:
    """Call ``obj._after_fork_in_child()`` in every process forked from this one while ``obj`` lives."""
    _live[obj] = None


def _after_fork_in_child() -> None:
    for obj in list(_live):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
