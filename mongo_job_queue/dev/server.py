"""``mongo-job-queue dev-server``: the embedded MongoDB wire server in the foreground, for your own development.

The same server as the test suite's and the demo's (SecantusDB, from the
``demo`` or ``test`` extra), listening where your app looks for MongoDB
until Ctrl-C, so trying the library needs no ``mongod`` and nobody has to
find ``SecantusDBServer`` by hand. It runs in this process: nothing else
competes for its interpreter. SecantusDB is GPL-2.0 software for
development and tests, never a production database; the library never
imports it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Optional, TextIO

from ..cli.common import EXIT_OK, EXIT_USAGE
from ..cli.values import port
from .embedded import INSTALL_HINT

__all__ = ["DEFAULT_PORT", "main"]

PROG = "mongo-job-queue dev-server"
#: MongoDB's own port: an app's default ``mongodb://localhost:27017`` finds the server there.
DEFAULT_PORT = 27017


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the embedded MongoDB wire server (SecantusDB, GPL-2.0, for development and tests "
        "only) in the foreground until Ctrl-C or SIGTERM, and print the URI to use.",
    )
    parser.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0: any free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="keep the databases in DIR across restarts (default: a temporary directory, deleted at exit)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Serve until SIGINT or SIGTERM; 0 after a stop, 2 when the server cannot start."""
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        from secantus import SecantusDBServer
    except ImportError:
        print(f"{PROG}: error: {INSTALL_HINT}", file=err)
        return EXIT_USAGE
    storage = os.path.abspath(args.data) if args.data else tempfile.mkdtemp(prefix="mjq-dev-server-")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, _setter(stop)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        os.makedirs(storage, exist_ok=True)
        server = SecantusDBServer(host=args.host, port=args.port, storage_path=storage)
        try:
            server.start()
        except OSError as exc:
            hint = " (a mongod already there? pass --port)" if args.port else ""
            print(f"{PROG}: error: cannot listen on {args.host}:{args.port}: {exc}{hint}", file=err)
            return EXIT_USAGE
        try:
            print(_banner(storage, kept=bool(args.data)), file=out)
            print(f"MONGODB_URI={server.uri}", file=out, flush=True)
            stop.wait()
            print("stopping", file=out, flush=True)
        finally:
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not args.data:
            shutil.rmtree(storage, ignore_errors=True)
    return EXIT_OK


def _setter(stop: threading.Event) -> Callable[[int, Optional[FrameType]], None]:
    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    return on_signal


def _banner(storage: str, *, kept: bool) -> str:
    try:
        meta = importlib.metadata.metadata("SecantusDB")
        declared = (meta.get_all("License-Expression") or []) + (meta.get_all("License") or [])
        version, license_text = meta["Version"], next((v for v in declared if v), "GPL-2.0")
    except importlib.metadata.PackageNotFoundError:
        version, license_text = "(version unknown)", "GPL-2.0"
    where = f"data in {storage}" if kept else "data in a temporary directory, deleted at exit (--data DIR keeps it)"
    return (
        f"SecantusDB {version}, licensed {license_text}: an embedded MongoDB wire server for development "
        f"and tests only, never for production data\n{where}\nserving until Ctrl-C; point your app at:"
    )
