"""The one path from enqueue arguments to a stored job: validate once, encode once, insert.

:meth:`~mongo_job_queue.PersistentJobQueue.enqueue`,
:meth:`~mongo_job_queue.PersistentJobQueue.enqueue_many` and every schedule
fire go through here, in three steps:

1. :meth:`.JobBuilder.build` (:mod:`.builder`) checks each argument, then
   lets the app's model validate and convert its fields (its own ones included);
2. the ``before_enqueue`` hooks may add fields (a trace context);
3. :meth:`.JobBuilder.seal` encodes the final document once, which proves it
   storable and measures its size, right before :class:`Enqueuer` inserts it.

So what is checked is exactly what is written, each check runs once, and
bad input raises :class:`~mongo_job_queue.errors.InvalidJobError` with the
database as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Optional, Protocol, TypeVar

from .builder import ENQUEUE_KEYS, JobBuilder, job_arguments
from .errors import EagerJobFailed, InvalidJobError
from .known_types import KnownTypes
from .loading import load_job
from .middleware import MiddlewareChain
from .model import BaseJob
from .status import COMPLETED
from .store import JobStore
from .worker import Worker
from .worker.wakeup import namespace_of
from .workflows import DEPENDENCY_KEYS, Part, plan

# JobBuilder and job_arguments live in builder.py; imported from here too.
__all__ = ["EagerFlags", "Enqueuer", "JobBuilder", "job_arguments"]

J = TypeVar("J", bound=BaseJob)
#: A staged job's ``run_at`` until its batch add is confirmed: no claim reaches it.
STAGED_RUN_AT = datetime(9000, 1, 1)


#: How new documents reach the store: one job, a bulk of them, or the job of a schedule's fire time.
InsertMode = Literal["one", "many", "fire", "graph"]


class EagerFlags(Protocol):
    """The queue's testing switches (see :mod:`mongo_job_queue.testing`), read at each enqueue."""

    #: Run each new job at once, in the calling thread.
    eager: bool
    #: With ``eager``: raise EagerJobFailed when the job did not complete.
    eager_propagate: bool


@dataclass(eq=False)
class Enqueuer(Generic[J]):
    """Writes built jobs: hooks around the one insert, then an eager run or a wake-up of the local worker."""

    builder: JobBuilder[J]
    store: JobStore
    worker: Worker
    hooks: MiddlewareChain
    flags: EagerFlags
    #: Warns about (or, with ``strict_types``, refuses) job types no handler is known for.
    types: KnownTypes = field(init=False)

    def __post_init__(self) -> None:
        self.types = KnownTypes(self.builder.registry, self.store)

    def enqueue(
        self, spec: Mapping[str, Any], extra: Mapping[str, Any], managed: Optional[Mapping[str, Any]] = None
    ) -> J:
        """One job; the existing one instead if its unique key (or its preset ``_id``) is held."""
        moved = {key: extra[key] for key in DEPENDENCY_KEYS if key in extra}  # enqueue()'s keywords, via **extra
        spec, extra = {**spec, **moved}, {k: v for k, v in extra.items() if k not in moved}
        doc = self.builder.build(spec, extra, self.store.now(), managed=managed)
        self.types.check([doc["type"]], strict=self.builder.config.strict_types)
        holder = self._insert([doc], "one")
        if holder is not None:
            return self._instance(holder)
        return self._instance(self._run_or_wake([doc])[0])

    def enqueue_many(
        self,
        jobs: Iterable[Mapping[str, Any]],
        managed: Optional[Mapping[str, Any]] = None,
        confirm: Optional[Callable[[list[dict[str, Any]]], None]] = None,
    ) -> list[J]:
        """Every job built before any is written, then one bulk insert; errors name the job's index.

        ``confirm`` (a batch's add): the jobs are inserted unclaimable, then
        ``confirm(docs)`` releases them, or raises after taking them out.
        """
        docs = []
        for index, spec in enumerate(jobs):
            if not isinstance(spec, Mapping):
                raise InvalidJobError(f"jobs[{index}] must be a mapping, got {type(spec).__name__}")
            if "job_type" not in spec:
                raise InvalidJobError(f"jobs[{index}] has no 'job_type'")
            if "unique_key" in spec or "unique_for_ms" in spec:
                raise InvalidJobError(f"jobs[{index}]: unique_key is supported by enqueue() only")
            known = {k: v for k, v in spec.items() if k in ENQUEUE_KEYS}
            extra = {k: v for k, v in spec.items() if k not in ENQUEUE_KEYS}
            known.setdefault("priority", 0)
            known.setdefault("queue", "default")
            try:
                docs.append(self.builder.build(known, extra, self.store.now(), managed=managed))
            except InvalidJobError as exc:
                raise InvalidJobError(f"jobs[{index}]: {exc}") from exc
        self.types.check([doc["type"] for doc in docs], strict=self.builder.config.strict_types)
        if confirm is not None:
            for doc in docs:
                doc["batch_staged_run_at"], doc["run_at"] = doc["run_at"], STAGED_RUN_AT
        self._insert(docs, "many")
        if confirm is not None:
            confirm(docs)
            for doc in docs:
                doc["run_at"] = doc.pop("batch_staged_run_at")
        return [self._instance(doc) for doc in self._run_or_wake(docs)]

    def enqueue_graph(self, graph: Part) -> list[J]:
        """Every job of ``graph`` (see :mod:`.workflows`) checked, then inserted all or nothing; dependents first."""
        nodes, _ = plan(graph)
        docs = []
        now = self.store.now()
        for _index, node in enumerate(nodes):
            options = {k: v for k, v in node.spec.options.items() if k not in DEPENDENCY_KEYS}
            known = {k: v for k, v in options.items() if k in ENQUEUE_KEYS or k in ("unique_key", "unique_for_ms")}
            extra = {k: v for k, v in options.items() if k not in known}
            known.update(job_type=node.spec.job_type, data=node.spec.data, depends_on=list(node.depends_on))
            try:
                doc = self.builder.build(known, extra, now)
            except InvalidJobError as exc:
                raise type(exc)(f"job {node.spec.id} ({node.spec.job_type}): {exc}") from exc
            doc["_id"] = node.spec.id
            docs.append(doc)
        needed = {i for doc in docs for i in doc.get("depends_on") or ()}
        for doc in docs:
            if doc["_id"] in needed:
                doc["has_dependents"] = True
        self.types.check([doc["type"] for doc in docs], strict=self.builder.config.strict_types)
        self._insert(docs, "graph")
        # Dependencies first, so that in eager mode each dependent is released before its turn.
        return [self._instance(doc) for doc in reversed(self._run_or_wake(docs[::-1]))]

    def enqueue_fire(
        self, spec: Mapping[str, Any], extra: Mapping[str, Any], *, schedule: str, fire_time: datetime
    ) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """The job of one fire time: ``(doc, None)`` once inserted, else ``(doc, holder)``, nothing written.

        The holder is the job of the same fire time (enqueued by another
        process) or the schedule's unfinished job holding its ``unique_key``.
        """
        doc = self.builder.build(spec, extra, self.store.now(), schedule=schedule, fire_time=fire_time)
        holder = self._insert([doc], "fire")
        if holder is None:
            self._run_or_wake([doc])
        return doc, holder

    def _insert(self, docs: list[dict[str, Any]], mode: InsertMode) -> Optional[dict[str, Any]]:
        """Announce, seal and write ``docs``: the one place where new jobs reach the store.

        Returns None once written, else the stored job holding the unique key
        or the fire time of ``docs[0]``. Every ``before_enqueue`` gets its
        ``after_enqueue`` or ``on_enqueue_aborted`` (after ``on_enqueue_duplicate``
        when a holder is the answer), so a producer span always ends.
        """
        for doc in docs:
            self.hooks.emit("before_enqueue", doc)
        holder: Optional[dict[str, Any]] = None
        try:
            if any(doc.get("mutex_key") is not None for doc in docs):
                self.store.limits.mark_mutex()  # before the insert: no claim may take it unadmitted
            for index, doc in enumerate(docs):
                self._seal(doc, index if mode == "many" else None, hooked=bool(self.hooks))
            self.store.dependencies.prepare(docs)  # dependencies outside docs exist, and are flagged
            if mode == "graph":
                self.store.dependencies.insert_all(docs, self.store.jobs.insert_many)
            elif mode == "many":
                self.store.jobs.insert_many(docs)
            else:  # one path for plain, unique and fired jobs: the store reads which from the document
                holder = self.store.jobs.insert(docs[0])
        except BaseException as exc:
            self._aborted(docs, exc)
            raise
        if holder is not None:
            # The job already holding the key or the fire time is the answer: the hooks learn which job it is.
            self.hooks.emit("on_enqueue_duplicate", docs[0], existing=holder)
            self._aborted(docs, None)
            return holder
        for doc in docs:
            self.hooks.emit("after_enqueue", doc)
        # Dependencies that ended before these jobs were stored release them now, not at the next sweep.
        self.store.dependencies.settle(docs)
        return None

    def _seal(self, doc: dict[str, Any], index: Optional[int], *, hooked: bool) -> None:
        try:
            self.builder.seal(doc, hooked=hooked)
        except InvalidJobError as exc:
            if index is None:
                raise
            raise InvalidJobError(f"jobs[{index}]: {exc}") from exc

    def _aborted(self, docs: list[dict[str, Any]], exc: Optional[BaseException]) -> None:
        for doc in docs:
            self.hooks.emit("on_enqueue_aborted", doc, exc=exc)

    def _run_or_wake(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run the new jobs now in eager mode, else wake the local worker; the jobs in their latest state."""
        if self.flags.eager:
            return [self._run_eagerly(doc) for doc in docs]
        for doc in docs:
            # A job enqueued in the process that runs it need not wait for the next poll.
            registered = doc["type"] in self.builder.registry
            local = self.worker.running and registered and doc["queue"] in self.worker.config.queues
            if local and doc["run_at"] <= self.store.now():
                self.worker.notify()
        if self.worker.wakeups:  # and workers of other processes, through the wake-up channels (after the insert)
            now = self.store.now()
            due = sorted({(doc["queue"], doc["type"]) for doc in docs if doc["run_at"] <= now})
            for channel in self.worker.wakeups if due else ():
                channel.publish(namespace_of(self.store), due)
        return docs

    def _run_eagerly(self, doc: dict[str, Any]) -> dict[str, Any]:
        # App tests want the side effects of enqueue at once, without threads.
        if doc["type"] not in self.builder.registry:
            return doc
        self.worker.run_job_now(doc["_id"])
        fresh = self.store.admin.get(doc["_id"])
        doc = fresh if fresh is not None else doc
        if self.flags.eager_propagate and doc.get("status") != COMPLETED:
            error = doc.get("last_error") or {}
            raise EagerJobFailed(
                f"job {doc['_id']} ({doc['type']}) ended {doc.get('status')}: "
                f"{error.get('type', '?')}: {error.get('message', '')}",
                job_id=doc["_id"],
            )
        return doc

    def _instance(self, doc: dict[str, Any]) -> J:
        return load_job(self.builder.job_model, doc)
