"""The administration commands: stats, enqueue, retry, cancel, pause, resume, purge, schedules, jobs, workers,
batches, limits.

Each takes the queue, the parsed arguments and the two output streams, and
returns an exit code; :data:`ADMIN_COMMANDS` maps a command's name to it.
Inspecting jobs and workers, and retrying by filter, are in :mod:`.jobs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, Optional, TextIO

from mongoengine.errors import FieldDoesNotExist, ValidationError

from ..builder import ENQUEUE_KEYS
from ..errors import InvalidJobError
from ..known_types import KnownTypes
from ..model import LIBRARY_FIELDS, BaseJob
from ..queue import PersistentJobQueue
from ..status import ALL_STATUSES, FINISHED
from .batches import batches_command
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandError, object_id
from .jobs import has_filter, jobs_command, retry_matching, workers_command
from .render import iso
from .values import UNIT_MS

__all__ = ["ADMIN_COMMANDS"]

#: Keys that name an enqueue argument or the job's id, not a field of the app's model.
_QUEUE_KEYS = ENQUEUE_KEYS | {"unique_key", "unique_for_ms", "id", "pk", "_id"}


def _stats(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stats = queue.stats()
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True), file=out)
        return EXIT_OK
    statuses = list(ALL_STATUSES)  # blocked (waiting for dependencies) last
    width = max([len("queue"), *(len(q) for q in stats)])
    header = f"{'queue':<{width}}" + "".join(f"{s:>12}" for s in statuses) + f"{'oldest due':>14}{'paused':>8}"
    print(header, file=out)
    for name in sorted(stats):
        entry = stats[name]
        age = entry.get("oldest_due_age_s")
        age_text = "-" if age is None else f"{age:.1f}s"
        counts = "".join(f"{entry['counts'].get(s, 0):>12}" for s in statuses)
        paused = "yes" if entry.get("paused") else "no"
        print(f"{name:<{width}}{counts}{age_text:>14}{paused:>8}", file=out)
    if not stats:
        print("(no jobs)", file=out)
    paused_types = queue.paused()["job_types"]
    if paused_types:
        # A paused job type holds back its jobs in every queue: the table alone would not say why.
        print(f"paused job types: {', '.join(paused_types)}", file=out)
    busy = [row for row in queue.limits()["keys"] if row["running"]]
    for row in busy:  # the keys that hold runs now (all of them: the limits command)
        cap = "-" if row["max_running"] is None else row["max_running"]
        print(f"limit {row['limit']}[{row['value']}]: running {row['running']}/{cap}", file=out)
    return EXIT_OK


def _enqueue(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Said here, to the user, rather than logged by the enqueue (which strict_types makes refuse it instead).
    types = KnownTypes(queue.registry, queue.store)
    unknown = not queue.config.strict_types and bool(types.unknown([args.job_type]))
    if unknown:
        types.mark_warned(args.job_type)
    refused = _refused_fields(queue.job_model, args.fields)
    if refused:
        raise CommandError(refused, EXIT_USAGE)
    given = {key: getattr(args, flag) for key, flag in _OPTIONAL_FLAGS.items() if getattr(args, flag) is not None}
    try:
        job = queue.enqueue(
            args.job_type,
            args.data,
            queue=args.queue,
            priority=args.priority,
            delay_ms=args.delay,
            max_retries=args.max_retries,
            **given,
            **args.fields,
        )
    except InvalidJobError as exc:
        raise CommandError(f"{exc}{_fields_hint(exc.__cause__)}", EXIT_USAGE) from exc
    print(job.id, file=out)
    if unknown:
        print(
            f"warning: no handler for job type {args.job_type!r} is registered in the app or by any worker "
            "in the registry; check its spelling (the job was enqueued)",
            file=err,
        )
    return EXIT_OK


#: The enqueue options passed only when given: the option's name -> the parsed argument's.
_OPTIONAL_FLAGS = {
    "unique_key": "unique_key",
    "unique_for_ms": "unique_for",
    "mutex_key": "mutex_key",
    "time_limit_ms": "time_limit",
}
#: The enqueue options a --fields key may name by mistake, and the option of this command that sets them.
_OPTION_FLAGS = {
    "job_type": "the JOB_TYPE argument",
    "data": "--data",
    "queue": "--queue",
    "priority": "--priority",
    "delay_ms": "--delay",
    "max_retries": "--max-retries",
    "unique_key": "--unique-key",
    "unique_for_ms": "--unique-for",
    "mutex_key": "--mutex-key",
    "time_limit_ms": "--time-limit",
}


def _refused_fields(model: type[BaseJob], fields: Mapping[str, Any]) -> Optional[str]:
    """Why ``--fields`` is refused, or None: it sets only the fields the app's model declares beyond BaseJob's.

    An enqueue option among them would be passed as one (or collide with this
    command's own, a TypeError), and the job's id would be dropped.
    """
    own = set(model._fields) - set(BaseJob._fields) - _QUEUE_KEYS  # BaseJob is abstract: its subclass adds the id
    queue_owned = [f"{key!r}" for key in fields if key not in own and (key in BaseJob._fields or key in _QUEUE_KEYS)]
    unknown = [f"{key!r}" for key in fields if key not in own and f"{key!r}" not in queue_owned]
    parts = []
    if queue_owned:
        flags = [flag for key, flag in _OPTION_FLAGS.items() if f"{key!r}" in queue_owned]
        use = f" (use {', '.join(flags)})" if flags else ""
        parts.append(f"--fields cannot set {', '.join(queue_owned)}, managed by the queue{use}")
    if unknown:
        parts.append(f"{model.__name__} has no field {', '.join(unknown)}")
    if not parts:
        return None
    declared = ", ".join(sorted(own)) or "none"
    return f"{'; '.join(parts)}; --fields takes only the fields {model.__name__} declares: {declared}"


def _fields_hint(cause: Optional[BaseException]) -> str:
    """Where the app's own fields are set, when the model refused one of them."""
    if isinstance(cause, FieldDoesNotExist):
        return " (--fields takes only the fields the model declares)"
    own = [name for name in cause.to_dict() if name not in LIBRARY_FIELDS] if isinstance(cause, ValidationError) else []
    return f" (set the model's own fields with --fields '{{\"{own[0]}\": ...}}')" if own else ""


def _retry_or_cancel(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "cancel":
        by_filter = args.job_type is not None or args.queue is not None
        if by_filter == bool(args.job_ids) or (args.running and not by_filter):
            print("error: cancel takes job ids, or --type and/or --queue (with --running)", file=err)
            return EXIT_USAGE
        if by_filter:
            done = queue.cancel_jobs(job_type=args.job_type, queue=args.queue, running=args.running)
            requested = f", cancellation requested for {done['requested']} running" if args.running else ""
            print(f"cancelled {done['cancelled']} pending job(s){requested}", file=out)
            return EXIT_OK
    retry = args.command == "retry"
    if retry and has_filter(args) == bool(args.job_ids):
        print("error: retry takes job ids, or a filter (--status, --type, --queue, --since, --field)", file=err)
        return EXIT_USAGE
    if retry and has_filter(args):
        return retry_matching(queue, args, out, err)
    action = queue.retry_job if retry else queue.cancel_job
    code = EXIT_OK
    for job_id in [object_id(v) for v in args.job_ids]:
        if action(job_id):
            job = None if retry else queue.get_job(job_id)
            if job is not None and job.status == "processing":
                print(f"cancellation requested for {job_id} (running)", file=out)
            else:
                print(f"{'retried' if retry else 'cancelled'} {job_id}", file=out)
            continue
        job = queue.get_job(job_id)
        allowed = "failed or cancelled" if retry else "pending, blocked or processing"
        why = "no such job" if job is None else f"it is {job.status}, not {allowed}"
        print(f"{'retry' if retry else 'cancel'} {job_id} refused: {why}", file=err)
        code = EXIT_REFUSED
    return code


def _pause_or_resume(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.queues and not args.job_types:
        print(f"error: {args.command} needs --queue or --type", file=err)
        return EXIT_USAGE
    action = queue.pause if args.command == "pause" else queue.resume
    state = action(queues=args.queues, job_types=args.job_types)
    paused_queues = ", ".join(state["queues"]) or "none"
    paused_types = ", ".join(state["job_types"]) or "none"
    print(f"paused queues: {paused_queues}; paused job types: {paused_types}", file=out)
    return EXIT_OK


def _purge(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    statuses = tuple(dict.fromkeys(args.status)) if args.status else FINISHED
    deleted = queue.purge(args.older_than, statuses)
    print(f"purged {deleted} job(s) finished before {_ago(args.older_than)}", file=out)
    return EXIT_OK


def _ago(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms and ms % UNIT_MS[unit] == 0:
            return f"{ms // UNIT_MS[unit]}{unit} ago"
    return f"{ms}ms ago"


def _schedules(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    infos = queue.schedules()
    if args.json:
        rows = [
            {
                **dataclasses.asdict(info),
                "next_fire": iso(info.next_fire),
                "last_fire": iso(info.last_fire),
                "last_job_id": None if info.last_job_id is None else str(info.last_job_id),
            }
            for info in infos
        ]
        print(json.dumps(rows, indent=2), file=out)
        return EXIT_OK
    if not infos:
        print("(no schedules)", file=out)
        return EXIT_OK
    for info in infos:
        here = "" if info.registered else "  [not registered by --app: does not fire from its workers]"
        print(f"{info.name}: {info.job_type} {info.when}{here}", file=out)
        if info.registered:
            print(f"  next fire  {iso(info.next_fire) or '-'}", file=out)
        last = "-" if info.last_fire is None else f"{iso(info.last_fire)} ({info.last_status}, job {info.last_job_id})"
        print(f"  last fire  {last}", file=out)
    return EXIT_OK


def _limits(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    view = queue.limits()
    if args.json:
        rows = {
            "definitions": [dataclasses.asdict(limit) for limit in view["definitions"]],
            "keys": [
                {**row, "value": str(row["value"]), "next_start_at": iso(row["next_start_at"])} for row in view["keys"]
            ],
        }
        print(json.dumps(rows, indent=2, default=str), file=out)
        return EXIT_OK
    if not view["definitions"] and not view["keys"]:
        print("(no limits)", file=out)
        return EXIT_OK
    for limit in view["definitions"]:
        parts = [f"key={limit.key}" if limit.key else "no key"]
        parts += [f"max_running={limit.max_running}"] if limit.max_running else []
        parts += [f"rate={limit.rate} burst={limit.burst}"] if limit.rate else []
        parts += [f"types={','.join(limit.job_types)}"] if limit.job_types else []
        parts += ["fair"] if limit.fair else []
        print(f"{limit.name}: {' '.join(parts)}", file=out)
    for row in view["keys"]:
        cap = "-" if row["max_running"] is None else row["max_running"]
        nxt = f"  next start {iso(row['next_start_at'])}" if row["next_start_at"] else ""
        print(f"  {row['limit']}[{row['value']}]: running {row['running']}/{cap}{nxt}", file=out)
    return EXIT_OK


ADMIN_COMMANDS: dict[str, Callable[[PersistentJobQueue[Any], argparse.Namespace, TextIO, TextIO], int]] = {
    "stats": _stats,
    "enqueue": _enqueue,
    "retry": _retry_or_cancel,
    "cancel": _retry_or_cancel,
    "purge": _purge,
    "pause": _pause_or_resume,
    "resume": _pause_or_resume,
    "schedules": _schedules,
    "jobs": jobs_command,
    "workers": workers_command,
    "batches": batches_command,
    "limits": _limits,
}
