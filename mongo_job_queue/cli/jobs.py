"""Inspecting jobs and workers from the shell: ``jobs list``, ``jobs show``, ``workers`` and a bulk ``retry``.

The queries are the store's (:mod:`~mongo_job_queue.store.listing`, the
worker registry); this module turns options into them and prints the answer.
A bulk retry asks for confirmation with the count of the jobs it found, then
retries exactly those, by id: a job that starts to match meanwhile is not
retried unseen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional, TextIO

from ..model import LIBRARY_FIELDS
from ..queue import PersistentJobQueue
from ..status import CANCELLED, FAILED, PROCESSING
from ..store.listing import MAX_IDS, MAX_LIST, JobQuery, JobQueryError, Listing
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandError, object_id
from .render import iso, jsonable, print_json, print_table
from .values import ago

__all__ = ["RETRYABLE", "has_filter", "jobs_command", "retry_matching", "workers_command"]

#: The statuses a bulk ``retry`` takes (and its default).
RETRYABLE = (FAILED, CANCELLED)

#: Longest error message a table row shows.
_MESSAGE_CHARS = 60


def has_filter(args: argparse.Namespace) -> bool:
    """Whether any part of a job filter was given."""
    return bool(args.statuses or args.job_type or args.queue or args.since is not None or args.fields)


def _query(queue: PersistentJobQueue[Any], args: argparse.Namespace, statuses: tuple[str, ...] = ()) -> JobQuery:
    listing = Listing(queue.store)
    try:
        fields = tuple(listing.app_field(name, text) for name, text in args.fields)
    except JobQueryError as exc:
        raise CommandError(f"--field: {exc}", EXIT_USAGE) from exc
    since = args.since
    if isinstance(since, int):  # a duration: that long before now, on the server's clock
        since = ago(queue.store.now(), since)
    return JobQuery(
        statuses=tuple(dict.fromkeys(args.statuses or statuses)),
        queue=args.queue,
        job_type=args.job_type,
        created_since=since,
        fields=fields,
    )


def _describe(query: JobQuery, args: argparse.Namespace) -> str:
    """The jobs a filter names, in words: ``failed job(s) of type T in queue Q created since ...``."""
    words = [f"{' or '.join(query.statuses)} job(s)" if query.statuses else "job(s)"]
    if query.job_type is not None:
        words.append(f"of type {query.job_type}")
    if query.queue is not None:
        words.append(f"in queue {query.queue}")
    if query.created_since is not None:
        words.append(f"created since {iso(query.created_since)}")
    words += [f"with {name}={text}" for name, text in args.fields]
    return " ".join(words)


def jobs_command(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.jobs_command == "show":
        return _show(queue, args, out, err)
    if args.limit > MAX_LIST:
        raise CommandError(f"--limit must be at most {MAX_LIST}, got {args.limit}", EXIT_USAGE)
    docs = Listing(queue.store).summaries(_query(queue, args), args.limit)
    if args.json:
        print_json(docs, out)
        return EXIT_OK
    if not docs:
        print("(no job matches)", file=out)
        return EXIT_OK
    rows = [
        [
            str(doc["_id"]),
            str(doc.get("status")),
            str(doc.get("type")),
            str(doc.get("queue")),
            str(doc.get("attempts")),
            iso(doc.get("created_at")) or "-",
            _last_error(doc.get("last_error")),
        ]
        for doc in docs
    ]
    print_table(["ID", "STATUS", "TYPE", "QUEUE", "ATTEMPTS", "CREATED", "LAST ERROR"], rows, out)
    if len(docs) == args.limit:
        print(f"(the newest {args.limit}; --limit shows more)", file=out)
    return EXIT_OK


def _last_error(error: Any) -> str:
    if not isinstance(error, Mapping):
        return ""
    kind = str(error.get("type") or "").rpartition(".")[2]
    message = " ".join(str(error.get("message") or "").split())
    if len(message) > _MESSAGE_CHARS:
        message = message[: _MESSAGE_CHARS - 3] + "..."
    return f"{kind}: {message}" if message else kind


def _show(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    job_id = object_id(args.job_id)
    doc = queue.store.admin.get(job_id)
    if doc is None:
        print(f"no such job: {job_id}", file=err)
        return EXIT_REFUSED
    if args.json:
        print_json(doc, out)
        return EXIT_OK
    print(f"job {job_id}", file=out)
    for label, value in _fields(doc):
        print(f"  {label:<13}{value}", file=out)
    for label, key in (("data", "data"), ("result", "result")):
        if key in doc:
            print(f"  {label}", file=out)
            print(_indent(json.dumps(jsonable(doc[key]), indent=2), 4), file=out)
    errors = doc.get("errors") or ([doc["last_error"]] if doc.get("last_error") else [])
    print(f"  errors       {len(errors) or 'none'}", file=out)
    for error in errors:
        print(f"    attempt {error.get('attempt')}, {iso(error.get('at'))}: {error.get('type')}", file=out)
        print(_indent(str(error.get("message") or ""), 6), file=out)
        if error.get("traceback"):
            print(_indent(str(error["traceback"]).rstrip(), 6), file=out)
    _workflow(queue, doc, out)
    return EXIT_OK


def _workflow(queue: PersistentJobQueue[Any], doc: Mapping[str, Any], out: TextIO) -> None:
    """The job's place in a workflow: what it waits for (policy, status) and what waits for it."""
    deps = queue.store.dependencies
    rows = deps.dependencies(doc)
    if rows:
        print(f"  depends on   {len(rows)}", file=out)
        for job_id, policy, status in rows:
            print(f"    {job_id}  {status:<10} on failure: {policy}", file=out)
    if doc.get("has_dependents"):
        dependents = deps.dependents(doc["_id"])
        print(f"  dependents   {len(dependents)}", file=out)
        for dependent in dependents:
            print(f"    {dependent['_id']}  {dependent.get('status'):<10} {dependent.get('type')}", file=out)


def _fields(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The job's scalar fields as ``(label, text)``, the app's own ones last; absent ones left out."""

    def when(key: str) -> Optional[str]:
        value = doc.get(key)
        return iso(value) if isinstance(value, datetime) else None

    attempts = f"{doc.get('attempts')} (max_retries {doc.get('max_retries')})"
    rows: list[tuple[str, Optional[str]]] = [
        ("type", str(doc.get("type"))),
        ("queue", str(doc.get("queue"))),
        ("status", str(doc.get("status")) + ("  (cancellation requested)" if doc.get("cancel_requested") else "")),
        ("priority", str(doc.get("priority"))),
        ("attempts", attempts),
        ("created", when("created_at")),
        ("run at", when("run_at")),
        ("started", when("started_at")),
        ("finished", when("finished_at")),
        ("lease", _lease(doc)),
        ("progress", _progress(doc.get("progress"))),
        ("unique key", doc.get("unique_key")),
        ("unique until", when("unique_until")),
        ("schedule", f"{doc['schedule']} (fire time {iso(doc.get('fire_time'))})" if doc.get("schedule") else None),
        ("result error", doc.get("result_error")),
    ]
    own = [key for key in doc if key not in LIBRARY_FIELDS and key not in ("_id", "_cls")]
    rows += [(key, doc[key] if isinstance(doc[key], str) else json.dumps(jsonable(doc[key]))) for key in own]
    return [(label, str(value)) for label, value in rows if value is not None]


def _lease(doc: Mapping[str, Any]) -> Optional[str]:
    owner = doc.get("lease_owner")
    if not isinstance(owner, Mapping):
        return None
    who = f"{owner.get('host')} pid {owner.get('pid')} (worker {owner.get('worker_id')})"
    expires = doc.get("lease_expires_at")
    if doc.get("status") == PROCESSING and isinstance(expires, datetime):
        return f"held by {who} until {iso(expires)}"
    return f"last held by {who}"


def _progress(progress: Any) -> Optional[str]:
    if not isinstance(progress, Mapping) or "percent" not in progress:
        return None
    message = f" {progress['message']}" if progress.get("message") else ""
    at = progress.get("at")
    return f"{progress['percent']:g}%{message}" + (f" (at {iso(at)})" if isinstance(at, datetime) else "")


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def retry_matching(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Retry the failed or cancelled jobs a filter matches, once the count of exactly those is confirmed."""
    query = _query(queue, args, statuses=RETRYABLE)
    what = _describe(query, args)
    counted_at = queue.store.now()
    ids = Listing(queue.store).ids(query, MAX_IDS + 1)
    more = len(ids) > MAX_IDS
    ids = ids[:MAX_IDS]
    if not ids:
        print(f"no {what} to retry", file=out)
        return EXIT_OK
    count = f"{len(ids)} {what}" + (f" (the newest {MAX_IDS}: more match, run it again for the rest)" if more else "")
    if not args.yes:
        print(f"retry {count}? [y/N] ", end="", file=err, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing retried (not confirmed; --yes retries without asking)", file=err)
            return EXIT_REFUSED
    # The jobs as counted: one that no longer matches, or changed since, is left alone.
    done = queue.store.admin.retry_jobs(ids, matching=query.filter(all_statuses=True), unchanged_since=counted_at)
    gone = len(ids) - done
    left = f"; {gone} of them changed since they were counted and were left alone" if gone else ""
    print(f"retried {done} job(s){left}", file=out)
    return EXIT_OK


def workers_command(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    workers = [w for w in queue.store.workers.list() if args.all or w.state == "live"]
    if args.json:
        print_json([dataclasses.asdict(w) for w in workers], out)
        return EXIT_OK
    if not workers:
        print("(no live worker)" if not args.all else "(no worker registered)", file=out)
        return EXIT_OK
    rows = [
        [
            w.state,
            w.worker_id,
            w.host,
            str(w.pid),
            ",".join(w.queues),
            _names(w.job_types),
            f"{w.in_flight}/{w.concurrency}",
            iso(w.started_at) or "-",
            iso(w.last_seen) or "-",
        ]
        for w in workers
    ]
    print_table(["STATE", "WORKER", "HOST", "PID", "QUEUES", "TYPES", "RUNNING", "STARTED", "LAST SEEN"], rows, out)
    return EXIT_OK


def _names(names: list[str], shown: int = 3) -> str:
    return ",".join(names[:shown]) + (f",+{len(names) - shown}" if len(names) > shown else "")
