"""A claim's lease: what fences every write about a claimed job, and the heartbeat that keeps it.

A lease is a job's ``lease_token`` while it is ``processing``. Every write
of the job's owner is filtered by :func:`fence`, so a worker that lost
its lease (frozen, partitioned, rescued) can never overwrite the new
owner's state; the heartbeat moves ``lease_expires_at`` forward under the
same fence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne

from ..clock import after_ms
from ..status import PROCESSING
from .handle import JobStore
from .limiter import Limiter

__all__ = ["ClaimedJob", "Heartbeat", "Leases", "fence", "rekey"]

# Bound on the heartbeat's follow-up read (by _id, at most one document per running job).
_HEARTBEAT_READ_MAX_TIME_MS = 5_000


def fence(job_id: Any, token: Any) -> dict[str, Any]:
    """The filter of every write about a claimed job: this job, under this lease, still running."""
    return {"_id": job_id, "lease_token": token, "status": PROCESSING}


@dataclass
class ClaimedJob:
    """A raw job document together with the lease that fences writes about it."""

    doc: dict[str, Any]
    token: str
    #: The latest progress this run reported, written or still buffered: its
    #: completion writes it too, so a report buffered at the end is not dropped.
    progress: dict[str, Any] | None = field(default=None, compare=False)
    #: The job's shard key values (:meth:`.shardkey.ShardKey.of`), carried by every fenced write.
    key: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> ObjectId:
        return self.doc["_id"]  # type: ignore[no-any-return]

    @property
    def fence(self) -> dict[str, Any]:
        """The filter of every write about this run (see :func:`fence`)."""
        return {**fence(self.id, self.token), **self.key}


def rekey(store: JobStore, jobs: Sequence[ClaimedJob]) -> list[ClaimedJob]:
    """Of runs whose keyed fenced write found nothing, those still held: their current key values adopted.

    The app may change a job's shard key value while it runs (MongoDB allows
    it since 4.2): the fence then carries the old values and matches
    nothing. One read by ``_id`` alone (sent to every shard; only after such
    a miss) finds the job; if it is still ``processing`` under the run's
    token, the run takes the new values (``job.key``) and the caller writes
    again. Without a declared key there is nothing to adopt.
    """
    jobs = [job for job in jobs if job.key]
    if not jobs:
        return []
    fields = dict.fromkeys([*store.shard_key.fields, "status", "lease_token"], 1)
    docs = store.collection.find({"_id": {"$in": list({job.id for job in jobs})}}, fields)
    current = {d["_id"]: d for d in docs}
    adopted = []
    for job in jobs:
        doc = current.get(job.id)
        if doc is None or doc.get("lease_token") != job.token or doc.get("status") != PROCESSING:
            continue
        key = store.shard_key.of(doc)
        if key and key != job.key:
            job.key = key
            adopted.append(job)
    return adopted


@dataclass(frozen=True)
class Heartbeat:
    """What one heartbeat found: leases that are gone, and jobs whose cancellation was requested."""

    lost: set[ObjectId]
    cancel_requested: set[ObjectId]
    #: Ended by this worker's own outcome write while the beat was in flight: not lost.
    finished: set[ObjectId] = field(default_factory=set)


class Leases:
    """Renews the leases of running jobs, carrying their buffered progress, and their limiters' holders."""

    def __init__(self, store: JobStore, limiter: Limiter) -> None:
        self._store = store
        self._limiter = limiter

    def renew_leases(self, leases: Mapping[ObjectId, str]) -> set[ObjectId]:
        """Extend the lease of every job in ``leases``; return the ids whose lease is gone."""
        return self.heartbeat(leases).lost

    def heartbeat(
        self,
        leases: Mapping[ObjectId, str],
        progress: Mapping[ObjectId, Mapping[str, Any]] | None = None,
        claims: Mapping[ObjectId, ClaimedJob] | None = None,
    ) -> Heartbeat:
        """Extend the leases in ``leases``, writing buffered ``progress``; report lost leases and cancel requests.

        One bulk write when nothing is unusual. Each update also requires
        ``cancel_requested`` to be unset, so a job whose cancellation was
        requested fails to match: only then does the follow-up read run,
        which tells a lost lease from a cancel request, and the requested
        jobs' leases are renewed too (their handlers may still be running).
        ``claims`` (the runs, by job id) give the shard key values of each
        job; a run whose job's values changed takes the new ones (:func:`rekey`).
        """
        if not leases:
            return Heartbeat(set(), set())
        progress = progress or {}
        store = self._store

        def key(job_id: ObjectId) -> dict[str, Any]:
            claim = (claims or {}).get(job_id)
            return claim.key if claim is not None and claim.token == leases[job_id] else {}

        def renew(ids: Iterable[ObjectId], *, skip_cancelled: bool) -> int:
            now = store.now()
            ops = []
            for job_id in ids:
                filt = {**fence(job_id, leases[job_id]), **key(job_id)}
                if skip_cancelled:
                    filt["cancel_requested"] = {"$ne": True}
                # $max, not $set: a try that timed out on the client can still apply later, after a
                # newer beat; with $set it would move the lease back, even to a time already past.
                update: dict[str, Any] = {
                    "$max": {"lease_expires_at": after_ms(now, store.config.lease_ms), "updated_at": now}
                }
                if job_id in progress:
                    update["$set"] = {"progress": dict(progress[job_id])}
                ops.append(UpdateOne(filt, update))
            return store.collection.bulk_write(ops, ordered=False).matched_count

        def call() -> Heartbeat:
            if renew(leases, skip_cancelled=True) == len(leases):
                return Heartbeat(set(), set())
            docs = store.collection.find(
                store.shard_key.targeted({"_id": {"$in": list(leases)}}, [key(job_id) for job_id in leases]),
                {"status": 1, "lease_token": 1, "cancel_requested": 1},
                max_time_ms=_HEARTBEAT_READ_MAX_TIME_MS,
            )
            ours = {d["_id"]: d for d in docs if d.get("lease_token") == leases[d["_id"]]}
            unseen = [c for job_id, c in (claims or {}).items() if job_id not in ours and c.token == leases.get(job_id)]
            rekeyed = {claim.id for claim in rekey(store, unseen)}
            if rekeyed:  # the app changed their key values: read them again under the new ones
                again = store.collection.find(
                    store.shard_key.targeted({"_id": {"$in": list(rekeyed)}}, [key(job_id) for job_id in rekeyed]),
                    {"status": 1, "lease_token": 1, "cancel_requested": 1},
                    max_time_ms=_HEARTBEAT_READ_MAX_TIME_MS,
                )
                ours.update({d["_id"]: d for d in again if d.get("lease_token") == leases[d["_id"]]})
            held = {job_id for job_id, d in ours.items() if d.get("status") == PROCESSING}
            cancel = {job_id for job_id in held if ours[job_id].get("cancel_requested")}
            if cancel or rekeyed:
                renew(cancel | (rekeyed & held), skip_cancelled=False)
            # A job that still carries our token but left "processing" was
            # ended by this worker's own outcome write, racing this beat: it
            # is finished, not lost (a claim or a rescue replaces the token).
            finished = set(ours) - held
            return Heartbeat(set(leases) - set(ours), cancel, finished)

        beat: Heartbeat = store.retry(call, "renew_leases")
        # The runs still held: their limiters' holders live as long as their leases.
        kept = {job_id: token for job_id, token in leases.items() if job_id not in beat.lost}
        try:
            self._limiter.extend(kept, after_ms(store.now(), store.config.lease_ms))
        except Exception as exc:  # noqa: BLE001 - the next beat extends them; the leases are renewed
            store.log.warning("could not extend the limiter holders of %d run(s): %r", len(kept), exc)
        return beat
