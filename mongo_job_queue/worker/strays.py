"""The hand-back of stray claims: jobs this process's claims leased without telling (their reply was lost).

:mod:`mongo_job_queue.store.strays` keeps the tokens of the claims whose
outcome is unknown and finds the jobs leased under them that no run holds;
this step, on the maintenance thread, hands each back as a claimed job that
never started. Not on the heartbeat: its read and writes come when the
server is slow (that is why a reply was lost), and must never hold up a
lease renewal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from ..store import ClaimedJob, JobStore
from .executor import Executor
from .inflight import log_job

__all__ = ["StrayReturner"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StrayReturner:
    """Hands back the jobs leased by this process's claims whose reply was lost."""

    store: JobStore
    executor: Executor
    log: logging.Logger = log

    def run_once(self, now: Optional[datetime] = None) -> int:
        """One read (none while no token is watched) and a hand-back per job found; how many were found."""
        strays = self.store.jobs.strays
        if not strays:
            return 0
        found = strays.found()
        for claimed in found:
            log_job(self.log, logging.WARNING, claimed.doc, "leased by a claim whose reply was lost; handing it back")
            self.executor.hand_back(claimed)
        return len(found)

    def take(self, doc: dict[str, Any]) -> bool:
        """Hand ``doc`` back if a claim of this process leased it without telling; whether it did.

        The lease sweep calls it for each expired lease before recovering it,
        so a stray whose late write landed already expired (or expired before
        the next :meth:`run_once`) goes back with its attempt not counted.
        """
        strays = self.store.jobs.strays
        if not strays or not strays.holds(doc):
            return False
        claimed = ClaimedJob(doc, doc["lease_token"], key=self.store.shard_key.of(doc))
        log_job(self.log, logging.WARNING, doc, "lost claim reply, lease expired: handing it back")
        self.executor.hand_back(claimed)
        return True

    def final(self) -> None:
        """At stop: one more step, each call tried once, so that a stopping worker leaves none it can see."""
        if not self.store.jobs.strays:
            return
        try:
            with self.store.tried_once():
                self.run_once()
        except Exception:
            self.log.warning("could not hand back the jobs of a lost claim reply at stop", exc_info=True)
