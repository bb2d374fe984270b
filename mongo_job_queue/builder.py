"""Enqueue arguments to a job document: each argument checked, the app's model fields validated, encoded once.

:class:`JobBuilder` is pure (no database access), so a schedule's job can be
checked when the schedule is defined; :class:`~.enqueue.Enqueuer` writes
what it builds. :func:`job_arguments` is the one parameter list of
``queue.enqueue`` and ``batch.enqueue``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Optional, TypeVar

from bson import ObjectId
from mongoengine.errors import FieldDoesNotExist, NotRegistered, ValidationError
from mongoengine.fields import DictField, ListField

from .clock import MAX_DURATION_MS, after_ms, to_naive_utc
from .config import MAX_RETRIES, QueueConfig
from .errors import InvalidJobError
from .handlers import HandlerRegistry
from .loading import load_job
from .model import LIBRARY_FIELDS, BaseJob
from .status import BLOCKED, PENDING
from .validation import check_document, check_nested, check_payload, stored_job_problems
from .workflows import DEPENDENCY_KEYS, encode_dependencies

__all__ = ["ENQUEUE_KEYS", "JobBuilder", "job_arguments"]

J = TypeVar("J", bound=BaseJob)

#: The library's container fields (lists, documents), which a new job stores only when they hold
#: something; ``data`` always. Derived from the model, so a container field added later is included.
_EMPTY_UNSTORED = tuple(
    name for name, field in BaseJob._fields.items() if isinstance(field, (ListField, DictField)) and name != "data"
)

#: The names of a job's id (the field, MongoEngine's alias of it, the stored key): the queue chooses it.
_ID_NAMES = frozenset({"id", "pk", "_id"})

#: The arguments of ``enqueue`` an ``enqueue_many`` item may hold besides the app's
#: own fields (``unique_key`` is for ``enqueue`` alone).
ENQUEUE_KEYS = frozenset(
    {
        "job_type",
        "data",
        "run_at",
        "delay_ms",
        "priority",
        "queue",
        "max_retries",
        "time_limit_ms",
        "mutex_key",
        *DEPENDENCY_KEYS,
    }
)


def job_arguments(
    job_type: str,
    data: Optional[Mapping[str, Any]] = None,
    *,
    run_at: Optional[datetime] = None,
    delay_ms: Optional[int] = None,
    priority: int = 0,
    queue: str = "default",
    max_retries: Optional[int] = None,
    time_limit_ms: Optional[int] = None,
    unique_key: Optional[str] = None,
    unique_for_ms: Optional[int] = None,
    **extra_fields: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bind one job's arguments (documented at :meth:`~mongo_job_queue.PersistentJobQueue.enqueue`): spec, app fields.

    The one parameter list of ``queue.enqueue`` and ``batch.enqueue``, typed with it (:mod:`.forwarding`).
    """
    spec = dict(
        job_type=job_type, data=data, run_at=run_at, delay_ms=delay_ms, priority=priority, queue=queue,
        max_retries=max_retries, time_limit_ms=time_limit_ms, unique_key=unique_key, unique_for_ms=unique_for_ms,
    )  # fmt: skip
    return spec, extra_fields


@dataclass(eq=False)
class JobBuilder(Generic[J]):
    """Turns enqueue arguments into a job document of the app's model, and seals it once final.

    Pure: no database access, so a schedule's job can be checked when the
    schedule is defined.
    """

    job_model: type[J]
    config: QueueConfig
    registry: HandlerRegistry

    def build(
        self,
        spec: Mapping[str, Any],
        extra: Mapping[str, Any],
        now: datetime,
        *,
        schedule: Optional[str] = None,
        fire_time: Optional[datetime] = None,
        managed: Optional[Mapping[str, Any]] = None,
    ) -> dict[str, Any]:
        """The document of ``spec`` (enqueue's arguments) and ``extra`` (the app's fields), each field checked.

        ``schedule`` and ``fire_time`` mark the job of a schedule's fire time.
        ``managed``: fields the queue itself sets (a batch's ``batch_id``, a
        callback's preset ``_id``), never the app's ``extra``.
        The document is not encoded yet: hooks may still add to it, then
        :meth:`seal` checks the whole.
        """
        job_type = spec["job_type"]
        if not isinstance(job_type, str) or not job_type:
            raise InvalidJobError(f"job_type must be a non-empty str, got {job_type!r}")
        data = spec.get("data")
        data = {} if data is None else data
        check_payload(data)
        queue = spec.get("queue", "default")
        if not isinstance(queue, str) or not queue:
            raise InvalidJobError(f"queue must be a non-empty str, got {queue!r}")
        priority = spec.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidJobError(f"priority must be an int, got {priority!r}")
        if not -(2**31) <= priority < 2**31:
            raise InvalidJobError(f"priority must fit in 32 bits, got {priority}")
        max_retries = spec.get("max_retries")
        default_retries = max_retries is None  # then the handler's, where the job runs, decides (retry_limit)
        if max_retries is None:
            registered = self.registry.get(job_type)
            max_retries = registered.max_retries if registered and registered.max_retries is not None else None
        if max_retries is None:
            max_retries = self.config.max_retries
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
            raise InvalidJobError(f"max_retries must be an int from 0 to {MAX_RETRIES}, got {_short_repr(max_retries)}")
        time_limit_ms = spec.get("time_limit_ms")
        if time_limit_ms is not None and (
            isinstance(time_limit_ms, bool)
            or not isinstance(time_limit_ms, int)
            or not 0 <= time_limit_ms <= MAX_DURATION_MS
        ):
            raise InvalidJobError(
                f"time_limit_ms must be an int from 0 (no limit) to {MAX_DURATION_MS}, got {_short_repr(time_limit_ms)}"
            )
        unique = _unique(spec.get("unique_key"), spec.get("unique_for_ms"))
        # enqueue() passes it among the app's fields (its signature has none): taken out here.
        extra = dict(extra)
        mutex_key = extra.pop("mutex_key", spec.get("mutex_key"))
        if mutex_key is not None and (not isinstance(mutex_key, str) or not mutex_key or len(mutex_key) > 1000):
            raise InvalidJobError(
                f"mutex_key must be a non-empty str of at most 1000 characters, got {mutex_key!r:.80}"
            )
        run_at = _run_at(spec.get("run_at"), spec.get("delay_ms"), now)
        id_names = sorted(set(extra) & _ID_NAMES)
        if id_names:  # MongoEngine would take the value, then build() chose the job's id anyway (and dropped it)
            raise InvalidJobError(
                f"field(s) {', '.join(id_names)} are managed by the queue and cannot be set at enqueue:"
                " the queue chooses the job's id"
            )
        forbidden = sorted(set(extra) & LIBRARY_FIELDS)
        if forbidden:
            raise InvalidJobError(
                f"field(s) {', '.join(forbidden)} are managed by the queue and cannot be set at enqueue"
            )
        for name, value in extra.items():
            check_nested(value, what=name)  # e.g. a '_cls' key, which would make the job unloadable
        fields = {
            "type": job_type,
            "status": PENDING,
            "data": dict(data),
            "queue": queue,
            "priority": priority,
            "run_at": run_at,
            "attempts": 0,
            "max_retries": max_retries,
            "created_at": now,
            "updated_at": now,
        }
        if default_retries:
            fields["max_retries_default"] = True
        if time_limit_ms is not None:  # else the handler's, where the job runs, applies
            fields["time_limit_ms"] = time_limit_ms
        if unique is not None:
            fields["unique_key"] = unique[0]
            if unique[1] is not None:
                fields["unique_until"] = after_ms(now, unique[1])
        if mutex_key is not None:
            fields["mutex_key"] = mutex_key
        if schedule is not None:
            fields["schedule"] = schedule
            fields["fire_time"] = fire_time
        if spec.get("depends_on"):  # blocked until they end (see workflows.rst)
            ids, policies = encode_dependencies(spec["depends_on"], spec.get("on_dependency_failure", "cancel"))
            fields.update(status=BLOCKED, depends_on=ids, dependency_policies=policies)
        elif spec.get("on_dependency_failure") is not None:
            encode_dependencies((), spec["on_dependency_failure"])  # a bad policy is refused even without depends_on
        own = dict(managed or {})
        job_id = own.pop("_id", None) or ObjectId()
        fields.update(own)
        try:
            job = self.job_model(**fields, **extra)
            job.validate()
        except (FieldDoesNotExist, ValidationError, NotRegistered) as exc:
            raise InvalidJobError(_rejection(self.job_model, extra, exc)) from exc
        doc: dict[str, Any] = job.to_mongo().to_dict()
        for key in _EMPTY_UNSTORED:
            if key in doc and not doc[key]:
                del doc[key]  # an empty container costs every read and write of the job; absent reads the same
        doc["_id"] = job_id
        return doc

    def seal(self, doc: Mapping[str, Any], *, hooked: bool = False) -> int:
        """Encode the final document, once: its size in bytes, or InvalidJobError if it cannot be stored.

        ``hooked``: ``before_enqueue`` middleware has seen the document and may
        have changed anything in it, so it is checked again as a whole, as
        the worker will load it. Without middleware, :meth:`build`'s checks
        stand and nothing is checked twice.
        """
        if hooked:
            self._recheck(doc)
        return check_document(doc, limit=self.config.max_job_bytes)

    def _recheck(self, doc: Mapping[str, Any]) -> None:
        problems = stored_job_problems(doc)
        if doc.get("status") != (BLOCKED if doc.get("depends_on") else PENDING) or doc.get("attempts") != 0:
            problems.append("a new job must be pending (blocked, with depends_on) with 0 attempts")
        if not problems:
            try:
                check_payload(doc["data"])
                for name, value in doc.items():
                    if name != "data":
                        check_nested(value, what=name)
                load_job(self.job_model, dict(doc)).validate()
            except (FieldDoesNotExist, ValidationError, NotRegistered, InvalidJobError) as exc:
                problems.append(str(exc))
        if problems:
            raise InvalidJobError(f"a before_enqueue middleware left the job unstorable: {'; '.join(problems)}")


def _unique(key: Any, for_ms: Any) -> Optional[tuple[str, Optional[int]]]:
    if key is None:
        if for_ms is not None:
            raise InvalidJobError("unique_for_ms needs a unique_key")
        return None
    if not isinstance(key, str) or not key or len(key) > 1000:
        raise InvalidJobError(f"unique_key must be a non-empty str of at most 1000 characters, got {key!r:.80}")
    if for_ms is not None and (
        isinstance(for_ms, bool) or not isinstance(for_ms, int) or not 1 <= for_ms <= MAX_DURATION_MS
    ):
        raise InvalidJobError(
            f"unique_for_ms must be an int from 1 to {MAX_DURATION_MS} (100 years), got {_short_repr(for_ms)}"
        )
    return key, for_ms


def _run_at(run_at: Any, delay_ms: Any, now: datetime) -> datetime:
    if run_at is not None and delay_ms is not None:
        raise InvalidJobError("pass run_at or delay_ms, not both")
    if delay_ms is not None:
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or not 0 <= delay_ms <= MAX_DURATION_MS:
            raise InvalidJobError(
                f"delay_ms must be an int from 0 to {MAX_DURATION_MS} (100 years), got {_short_repr(delay_ms)}"
            )
        return after_ms(now, delay_ms)
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidJobError(f"run_at must be a datetime, got {type(run_at).__name__}")
        try:
            at = to_naive_utc(run_at)
        except (OverflowError, ValueError) as exc:  # UTC of an aware time near datetime.min/max
            raise InvalidJobError(f"run_at {_short_repr(run_at)} is out of range in UTC: {exc}") from exc
        # The bound of delay_ms: a date near datetime.max cannot be read back in a zone east of UTC.
        if at > after_ms(now, MAX_DURATION_MS):
            raise InvalidJobError(f"run_at must be at most 100 years ahead, got {_short_repr(run_at)}")
        return at
    return now


def _rejection(model: type[BaseJob], extra: Mapping[str, Any], exc: Exception) -> str:
    """The model's refusal in plain words, naming each field: MongoEngine's own text names it last, in a list."""
    name = model.__name__
    if isinstance(exc, FieldDoesNotExist):
        unknown = [f"{key!r}" for key in extra if key not in model._fields]
        return f"{name} has no field {', '.join(unknown)}" if unknown else f"{name} refused the job's fields: {exc}"
    problems: dict[str, str] = {}
    _flatten(exc.to_dict() if isinstance(exc, ValidationError) else {}, "", problems)
    missing = [path for path, text in problems.items() if text == "Field is required"]
    parts = []
    if missing:
        fields = ", ".join(f"{path!r}" for path in missing)
        parts.append(f"job is missing required field{'s' if len(missing) > 1 else ''} {fields} of {name}")
    parts += [f"field {path!r} of {name} is invalid: {text}" for path, text in problems.items() if path not in missing]
    return "; ".join(parts) or f"{name} refused the job: {exc}"


def _flatten(errors: Mapping[Any, Any], prefix: str, into: dict[str, str]) -> None:
    # Nested documents and lists report {"field": {"sub": "message"}}: one dotted path per message.
    for key, value in errors.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, f"{path}.", into)
        else:
            into[path] = str(value)


def _short_repr(value: Any) -> str:
    # repr() of an int of more than 4300 digits raises ValueError.
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    return f"{value!r:.80}"
