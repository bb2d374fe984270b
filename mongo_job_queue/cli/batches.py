"""``batches show|seal|cancel|retry ID``: a batch's state and counts from the shell, and acting on it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TextIO

from ..batches import BatchInfo
from ..errors import InvalidBatchError
from ..queue import PersistentJobQueue
from ..status import ALL_STATUSES
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandError
from .render import iso, print_json

__all__ = ["add_batch_commands", "batches_command"]


def add_batch_commands(sub: Any, command: Any) -> None:
    """``batches show ID [--json]``, ``seal ID``, ``cancel ID``, ``retry ID``; ``command`` adds common options."""
    batches = sub.add_parser("batches", help="show, seal, cancel or retry one batch (batches show ID)")
    within = batches.add_subparsers(dest="batches_command", metavar="SUBCOMMAND", required=True)
    show = command("show", "one batch: its state, its jobs counted by status, its callbacks", within)
    show.add_argument("batch_id", metavar="BATCH_ID")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    seal = command("seal", "seal a batch left open (its opener died): with every job final it finishes", within)
    seal.add_argument("batch_id", metavar="BATCH_ID")
    cancel = command("cancel", "seal a batch, cancel its pending jobs and ask its running ones to stop", within)
    cancel.add_argument("batch_id", metavar="BATCH_ID")
    retry = command("retry", "queue a batch's failed jobs again (its callbacks never fire twice)", within)
    retry.add_argument("batch_id", metavar="BATCH_ID")


def batches_command(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        if args.batches_command == "cancel":
            done = queue.cancel_batch(args.batch_id)
            print(
                f"cancelled {done['cancelled']} pending job(s), cancellation requested for {done['requested']} running",
                file=out,
            )
            return EXIT_OK
        if args.batches_command == "seal":
            queue.seal_batch(args.batch_id)
            info = queue.get_batch(args.batch_id)
            print(f"batch {args.batch_id} {info.state if info is not None else 'sealed'}", file=out)
            return EXIT_OK
        if args.batches_command == "retry":
            print(f"retried {queue.retry_batch(args.batch_id)} failed job(s)", file=out)
            return EXIT_OK
        info = queue.get_batch(args.batch_id)
    except InvalidBatchError as exc:
        raise CommandError(str(exc), EXIT_REFUSED if str(exc).startswith("no batch") else EXIT_USAGE) from exc
    if info is None:
        print(f"no such batch: {args.batch_id}", file=err)
        return EXIT_REFUSED
    if args.json:
        print_json(_as_json(info), out)
        return EXIT_OK
    _print(info, out)
    return EXIT_OK


def _as_json(info: BatchInfo) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data.update(counts=dict(info.counts), total=info.total, pending=info.pending, fired=list(info.fired))
    for key in ("created_at", "sealed_at", "finished_at"):
        data[key] = iso(data[key])
    return data


def _print(info: BatchInfo, out: TextIO) -> None:
    print(f"batch {info.id}", file=out)
    print(f"  state        {info.state}", file=out)
    for label, moment in (("created", info.created_at), ("sealed", info.sealed_at), ("finished", info.finished_at)):
        if moment is not None:
            print(f"  {label:<13}{iso(moment)}", file=out)
    known = [s for s in ALL_STATUSES if s in info.counts] + sorted(set(info.counts) - set(ALL_STATUSES))
    counts = ", ".join(f"{status} {info.counts[status]}" for status in known) or "none"
    print(f"  jobs         {info.total}: {counts}", file=out)
    for event, job_id in info.callbacks.items():
        print(f"  on_{event:<10}job {job_id}, {'fired' if event in info.fired else 'not fired'}", file=out)
    for name, value in info.extra.items():
        print(f"  {name:<13}{value}", file=out)
