"""``store.limits``: concurrency limits, mutex keys and rate limits, admitted inside the claim.

Two sibling collections hang off the jobs collection:

* ``<jobs>_limits``: the definitions (``queue.limit(...)``), kept by
  :mod:`.limit_defs`, which also tells every worker of a change;
* ``<jobs>_limiters``: one *limiter document* per (limit, key value). It
  holds the runs admitted under it, ``holders``: job id, lease token and
  ``until``, the run's lease expiry by server time, which the heartbeat
  moves forward; and ``tat``, the GCRA state of a rate limit.

A run is admitted by one atomic update of its limiter document, a ``$push``
that matches only while fewer than ``max_running`` holders are listed, so
concurrent claimers can never overshoot (no "count, then claim"). Holders
whose ``until`` passed (their worker died) are pulled first when a limiter
looks full (:mod:`.holders`; a rate's GCRA is :mod:`.rates`). A run leaves
its limiter when it ends, whatever the outcome (:meth:`Limiter.release`); a
crashed worker's holders expire with its leases. A run abandoned to its time
limit has lost its lease but its handler may still be running: its holders
are kept, and extended by the heartbeat, until the handler returns
(:meth:`Limiter.keep`). Documents no run holds and no rate or turn needs are
deleted by a low-rate sweep (:mod:`.limiter_sweep`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.collection import Collection

from ..limits import MUTEX, MUTEX_FIELD, Limit
from . import holders, limiter_sweep, limiter_view, rates
from .handle import JobStore
from .limit_defs import LimitDefinitions
from .limit_hints import NO_HINTS, LimitHints, pre_check, tell_start

__all__ = [
    "HELD_BACK_POLL_S",
    "RATE_HORIZON",
    "RATE_SLOTS",
    "Admission",
    "Limiter",
    "RateRefusal",
    "limiter_id",
]

#: The job field listing the limiters whose rate reserved its start (its ``run_at`` is that start).
RATE_SLOTS = "rate_slots"
#: How far ahead a claim reserves a rate's starts for the jobs it read (their ``run_at`` set to the slot).
RATE_HORIZON = timedelta(seconds=1)
#: The shortest cap of a held-back poller's wait (one whose last claim left jobs out for a full limiter),
#: and the longest after a claim that skipped on a hint (a stale hint is not left to the base interval).
HELD_BACK_POLL_S = 0.5
_SEP = "\x1f"


def limiter_id(limit: str, value: Any) -> str:
    """The ``_id`` of the limiter document of ``limit`` for key ``value`` (its type is part of it).

    Numbers MongoDB finds equal share one: ints (``Int64`` too) and integral
    floats are one ``int``. Other types keep their own (``"1"``, ``True``,
    ``Decimal128("1")`` are three more limiters than ``1``).
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = int(value)
    return f"{limit}{_SEP}{type(value).__name__}{_SEP}{value}"


@dataclass(frozen=True)
class RateRefusal:
    """A rate had no start to give now: the limiter, for :meth:`Limiter.reserve`."""

    lid: str
    limit: Limit
    value: Any


@dataclass(frozen=True)
class Admission:
    """The limiters a claimed run holds, to extend and release with its lease."""

    job_id: ObjectId
    token: str
    ids: tuple[str, ...]


class Limiter:
    """Admission, holders' upkeep and the view of every limiter; the definitions are its collaborator."""

    def __init__(self, store: JobStore, definitions: LimitDefinitions) -> None:
        self._store = store
        #: The stored limits and what claims must admit (limit_defs.py).
        self.definitions = definitions
        self._lock = threading.Lock()
        #: The runs of this process that hold limiters, by (job id, token).
        self._held: dict[tuple[ObjectId, str], tuple[str, ...]] = {}
        #: Of those, the runs whose lease is gone but whose handler still runs (abandoned): extended regardless.
        self._kept: set[tuple[ObjectId, str]] = set()
        #: When a rate-limited key is next allowed to start (monotonic), for the poller's wait.
        self._next_start: Optional[float] = None
        #: Whether the last claim left out the jobs of a full limiter (they may run at the next poll).
        self._held_back = False
        #: Whether the last claim skipped on a hint (not MongoDB's word): it looks again within HELD_BACK_POLL_S.
        self._hint_skipped = False
        self._released: Callable[[], None] = _nothing
        self._sweeper = limiter_sweep.Sweep(lambda: self.limiters, lambda: self._store.collection)
        #: Fast pre-checks (``queue.add_limit_hints``, limit_hints.py): they skip round trips, never admit.
        self.hints: LimitHints = NO_HINTS

    @property
    def definitions_collection(self) -> Collection[dict[str, Any]]:
        return self.definitions.collection

    @property
    def limiters(self) -> Collection[dict[str, Any]]:
        return self._store.sibling("limiters")

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a run of this process leaves its limiters (the local poller's wake-up)."""
        self._released = callback

    def after_fork_in_child(self) -> None:
        """The parent's runs are not this process's."""
        self._lock = threading.Lock()
        self._held = {}
        self._kept = set()

    # -- definitions (limit_defs.py) ----------------------------------------

    def define(self, limit: Limit) -> None:
        """Store (or replace) ``limit``; every worker applies it from its next pause read."""
        self.definitions.define(limit)

    def remove(self, name: str) -> bool:
        """Delete the limit ``name`` and its limiter documents; False if there was none."""
        if name == MUTEX:
            return False
        deleted = self.definitions.delete(name)
        self._store.retry(lambda: self.limiters.delete_many({"limit": name}), "remove_limit")
        self.definitions.changed()
        return deleted

    def stored(self) -> list[Limit]:
        """The limits stored in the database (the built-in mutex not included), by name."""
        return self.definitions.stored()

    def mark_mutex(self) -> None:
        """Record, once per process, that jobs use mutex keys: from then on every claim admits them."""
        self.definitions.mark_mutex()

    def observe(self, version: int) -> None:
        """The definitions' version just read in the pause document (see :meth:`.control.Control.pause_state`)."""
        self.definitions.observe(version)

    def active(self) -> tuple[Limit, ...]:
        """The limits claims must admit (see :meth:`.limit_defs.LimitDefinitions.active`)."""
        return self.definitions.active()

    # -- the claim's side ---------------------------------------------------

    @staticmethod
    def unlimited(query: Mapping[str, Any]) -> dict[str, Any]:
        """``query`` for a claim that admits nothing: jobs with a mutex key are left to admitting claims."""
        return {**query, MUTEX_FIELD: None}

    def blocked(self, limits: Sequence[Limit], now: datetime) -> Optional[list[dict[str, Any]]]:
        """The ``$nor`` clauses that leave out the jobs of full or rate-blocked limiters; None: nothing can run.

        One read of the limiter documents that hold runs or a rate state, so
        claims skip the jobs of a full key instead of trying them again and
        again (no hot loop, and no attempt used).
        """
        by_name = {limit.name: limit for limit in limits}
        busy = {"limit": {"$in": list(by_name)}, "$or": [{"holders.0": {"$exists": True}}, {"tat": {"$gt": now}}]}
        docs = list(self.limiters.find(busy))
        full: dict[str, list[Any]] = {}
        paced: dict[str, list[Any]] = {}
        next_start: Optional[datetime] = None
        for doc in docs:
            limit = by_name.get(doc.get("limit", ""))
            if limit is None:
                continue
            live = holders.live(doc, now)
            if limit.max_running is not None and len(live) >= limit.max_running:
                full.setdefault(limit.name, []).append(doc.get("value"))
            eligible = rates.eligible_at(limit, doc)
            if eligible is not None and eligible > now:
                paced.setdefault(limit.name, []).append(doc.get("value"))
                next_start = eligible if next_start is None else min(next_start, eligible)
        self._next_start = None if next_start is None else time.monotonic() + (next_start - now).total_seconds()
        self._held_back = bool(full or paced)
        self._hint_skipped = False
        clauses: list[dict[str, Any]] = []
        for group, exempt in ((full, False), (paced, True)):
            for name, values in group.items():
                limit = by_name[name]
                clause: dict[str, Any] = {}
                if limit.key is not None:
                    clause[limit.key] = {"$in": values}
                if limit.job_types:
                    clause["type"] = {"$in": list(limit.job_types)}
                if exempt:  # a job that reserved its start (see reserve) is due at its slot
                    clause[RATE_SLOTS] = {"$nin": [limiter_id(name, value) for value in values]}
                elif not clause:
                    return None  # a queue-wide limit is full
                clauses.append(clause)
        return clauses

    def wait_hint(self, interval: float, base: float) -> float:
        """How long an idle poller waits: ``interval``, capped while limits hold jobs back.

        A slot freed in another process wakes nobody here, so held-back jobs
        are looked for again at the base interval rather than the idle
        backoff's, yet no more often than :data:`HELD_BACK_POLL_S` (a slot
        freed here wakes the poller at once). After a skip on a hint, within
        :data:`HELD_BACK_POLL_S` whatever the base: the hint may be stale, and
        MongoDB was not asked. A rate-limited key is looked at again the
        moment it opens.
        """
        if self._hint_skipped:
            wait = min(interval, HELD_BACK_POLL_S)
        else:
            wait = min(interval, max(base, HELD_BACK_POLL_S)) if self._held_back else interval
        next_start = self._next_start
        if next_start is not None:
            wait = min(wait, next_start - time.monotonic())
        return max(0.001, wait)

    def admit(
        self,
        doc: Mapping[str, Any],
        token: str,
        limits: Sequence[Limit],
        now: datetime,
        until: datetime,
        refused: set[str],
        hinted: bool = True,
        paid: Sequence[str] = (),
    ) -> Admission | RateRefusal | None:
        """Admit the run (``doc`` under ``token``) into each limiter it falls under; None if one refused.

        A rate that has no start to give now answers a :class:`RateRefusal`,
        with which the claim can :meth:`reserve` the job's exact start.

        Concurrency first (each a conditional ``$push``), then rates (a
        compare-and-set of ``tat``); a refusal takes back what was admitted
        and adds the refusing limiter to ``refused``, whose jobs this claim
        then skips without asking again. Runs inside the claim's retry (no
        retry of its own): each step is safe to run again, and a try after
        the first passes ``hinted=False`` (its own earlier push may be what
        made a limiter look full). The hints only ever skip a step. A rate
        whose start the job holds (``RATE_SLOTS``, :func:`.rates.held_start`)
        or that is in ``paid`` is not spent again.
        """
        covering = [(limit, limit.value_of(doc)) for limit in limits if limit.applies_to(doc)]
        ids = [limiter_id(limit.name, value) for limit, value in covering]
        if refused.intersection(ids):
            return None
        hints = pre_check(self.hints, covering, ids, now) if hinted else {}  # [limit hints] skips, never admits
        holder = {"job": doc["_id"], "token": token, "until": until}
        taken: list[str] = []
        for (limit, value), lid in zip(covering, ids, strict=True):
            if limit.max_running is None:
                continue
            known_full = lid in hints and hints[lid].full
            if known_full or not holders.push(self.limiters, self._store.collection, lid, limit, value, holder, now):
                holders.pull(self.limiters, taken, doc["_id"], token)
                refused.add(lid)
                if known_full:  # [limit hints] the poller looks again soon: a stale hint delays, never strands
                    self._held_back = self._hint_skipped = True
                else:
                    self.hints.saw_full([lid], now)
                return None
            taken.append(lid)
        reserved = doc.get(RATE_SLOTS) or []
        for (limit, value), lid in zip(covering, ids, strict=True):
            if limit.rate is None or lid in paid:
                continue
            if lid in reserved and rates.held_start(limit, doc, now):  # spent when it was reserved
                continue
            opens = hints[lid].opens_at if lid in hints else None
            if opens is not None and opens > now:  # [limit hints] closed until then: no spend asked
                holders.pull(self.limiters, taken, doc["_id"], token)
                self._held_back = self._hint_skipped = True
                if opens > now + RATE_HORIZON:  # nothing to reserve either: the next claims leave it out
                    refused.add(lid)
                    return None
                return RateRefusal(lid, limit, value)
            start = rates.spend(self.limiters, lid, limit, value, now)
            if start is None:
                holders.pull(self.limiters, taken, doc["_id"], token)
                return RateRefusal(lid, limit, value)
            tell_start(self.hints, lid, limit, start, now)  # [limit hints]
        for (limit, value), lid in zip(covering, ids, strict=True):
            if limit.fair:  # its turn is taken: it goes to the back of the round
                served = {"$max": {"served_at": now}, "$setOnInsert": {"limit": limit.name, "value": value}}
                self.limiters.update_one({"_id": lid}, served, upsert=True)
        filled = [lid for (limit, _), lid in zip(covering, ids, strict=True) if limit.max_running == 1]
        if filled:  # [limit hints] this run fills them: the other claimers need not push
            self.hints.saw_full(filled, now)
        return Admission(doc["_id"], token, tuple(taken))

    def turns(self, limit: Limit, values: Sequence[Any]) -> list[Any]:
        """``values`` of a fair limit in serving order: never served first, then least recently served."""
        ids = {limiter_id(limit.name, value): value for value in values}
        docs = self.limiters.find({"_id": {"$in": list(ids)}}, {"served_at": 1})
        served = {ids[d["_id"]]: d.get("served_at") for d in docs if d["_id"] in ids}
        never = datetime.min
        return sorted(values, key=lambda value: (served.get(value) or never, str(value)))

    def hold(self, admission: Admission) -> None:
        """Remember a claimed run's limiters, for the heartbeat and the release."""
        if admission.ids:
            with self._lock:
                self._held[(admission.job_id, admission.token)] = admission.ids

    def undo(self, admission: Admission) -> None:
        """Take back an admission whose job claim lost the race (inside the claim's own retry)."""
        holders.pull(self.limiters, list(admission.ids), admission.job_id, admission.token)
        self.hints.freed(admission.ids, self._store.now())  # [limit hints]

    def keep(self, job_id: ObjectId, token: str) -> None:
        """The run lost its lease on purpose (abandoned to its time limit), its handler still running: keep its slots.

        Every heartbeat of this process extends its holders until :meth:`release`
        (the handler returned). Should the process die first, they lapse a lease
        later, and the next claimer drops them (the job no longer runs under their token).
        """
        with self._lock:
            if (job_id, token) in self._held:
                self._kept.add((job_id, token))

    def keeping(self) -> bool:
        """Whether some abandoned run of this process still holds slots (the heartbeat goes on for them)."""
        with self._lock:
            return bool(self._kept)

    def lapse(self, job_id: ObjectId, token: str, until: datetime) -> None:
        """Let the holders of a run given up at process exit lapse at ``until`` (its return still releases them)."""
        with self._lock:
            ids = self._held.get((job_id, token), ())
            self._kept.discard((job_id, token))
        self._set_until([((job_id, token), ids)], until, "lapse_limiters")

    def release(self, job_id: ObjectId, token: str) -> None:
        """The run ended (any outcome): leave its limiters. Idempotent; a failure leaves them to expire."""
        with self._lock:
            ids = self._held.pop((job_id, token), ())
            self._kept.discard((job_id, token))
        if not ids:
            return
        try:
            self._store.retry(lambda: holders.pull(self.limiters, list(ids), job_id, token), "release_limiters")
        except Exception:  # noqa: BLE001 - the holders expire with the lease
            self._store.log.warning("could not release the limiters of job %s; they expire with its lease", job_id)
        self.hints.freed(ids, self._store.now())  # [limit hints]
        self._released()

    def extend(self, leases: Mapping[ObjectId, str], until: datetime) -> None:
        """Move the holders of these runs (their renewed leases) and of the kept ones forward to ``until``."""
        with self._lock:
            held = [(run, ids) for run, ids in self._held.items() if leases.get(run[0]) == run[1] or run in self._kept]
        self._set_until(held, until, "extend_limiters", later_only=True)

    def _set_until(
        self,
        runs: Sequence[tuple[tuple[ObjectId, str], Sequence[str]]],
        until: datetime,
        op: str,
        *,
        later_only: bool = False,
    ) -> None:
        # An extension is a $max: a try that timed out on the client and applies after a newer one
        # must not move the holder back (a slot freed early lets one run too many start).
        operator = "$max" if later_only else "$set"
        ops = [
            UpdateOne(
                {"_id": lid, "holders": {"$elemMatch": {"job": job_id, "token": token}}},
                {operator: {"holders.$.until": until}},
            )
            for (job_id, token), ids in runs
            for lid in ids
        ]
        if ops:
            self._store.retry(lambda: self.limiters.bulk_write(ops, ordered=False), op)

    def sweep(self, now: datetime) -> int:
        """Delete every limiter document a fresh one would replace (:mod:`.limiter_sweep`); how many."""
        return self._sweep(now, math.inf)[0]

    def sweep_step(self, now: datetime) -> float:
        """The maintenance service: sweep for at most a second; the seconds until the next step."""
        more = self._sweep(now, time.monotonic() + limiter_sweep.SWEEP_BUDGET_S)[1]
        return limiter_sweep.SWEEP_AGAIN_S if more else limiter_sweep.SWEEP_INTERVAL_S

    def _sweep(self, now: datetime, deadline: float) -> tuple[int, bool]:
        if self.definitions.none_stored():  # nothing is sent in an app that never used a limit
            return 0, False
        return self._sweeper.run(now, self._store.retry, deadline)

    def ids_of(self, doc: Mapping[str, Any], limits: Sequence[Limit]) -> list[str]:
        """The limiters that ``doc``'s job falls under."""
        return [limiter_id(limit.name, limit.value_of(doc)) for limit in limits if limit.applies_to(doc)]

    def reserve(self, refusal: RateRefusal, now: datetime, count: int) -> list[datetime]:
        """Spend up to ``count`` next starts of a rate within :data:`RATE_HORIZON` (see :func:`.rates.reserve`)."""
        slots = rates.reserve(self.limiters, refusal.lid, refusal.limit, now, count, RATE_HORIZON)
        if slots:
            opens = time.monotonic() + (slots[0] - now).total_seconds()
            self._next_start = opens if self._next_start is None else min(self._next_start, opens)
            tell_start(self.hints, refusal.lid, refusal.limit, slots[-1], now)  # [limit hints]
        return slots

    # -- what shows ---------------------------------------------------------

    def view(self) -> tuple[list[Limit], list[dict[str, Any]]]:
        """The limits in use (the mutex one once marked) and a row per limiter (:mod:`.limiter_view`)."""
        return limiter_view.view(self._store, self.definitions, self.limiters)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per limiter: limit, key value, running holders now, ``max_running`` and the next allowed start."""
        return self.view()[1]


def _nothing() -> None:
    """No listener of releases."""
