"""Command line entry point: ``python -m mongo_job_queue`` / ``mongo-job-queue``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mongo-job-queue", description="mongo-job-queue command line")
    parser.add_argument("command", choices=["demo"], help="demo: run the end-to-end demo on the embedded server")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
