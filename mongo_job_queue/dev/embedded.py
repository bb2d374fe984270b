"""An embedded MongoDB wire server for the demo and the test suite.

It runs SecantusDB (an optional, GPL-2.0 test/demo dependency, never needed at
runtime) in a child process, so the server's work does not compete with the
worker's threads for this interpreter's GIL, and so worker CPU measurements
stay honest. The child serves until its stdin closes: if this process dies,
the server goes with it instead of lingering.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from types import TracebackType
from typing import IO, Optional

from ..errors import EmbeddedServerError
from ..extras import extra_hint

__all__ = ["EmbeddedMongo", "EmbeddedServerError"]

INSTALL_HINT = f"the embedded server needs the 'SecantusDB' package, {extra_hint('demo')}"


class EmbeddedMongo:
    """Start a throwaway replica-set-reporting MongoDB server; ``uri`` once started.

    Use as a context manager::

        with EmbeddedMongo() as server:
            mongoengine.connect(host=server.uri, db="demo")
    """

    def __init__(
        self, storage_path: Optional[str] = None, *, startup_timeout: float = 60.0, cache_size: str = "1G"
    ) -> None:
        self._owns_dir = storage_path is None
        self.storage_path = storage_path or tempfile.mkdtemp(prefix="mjq-embedded-")
        self.startup_timeout = startup_timeout
        #: The storage engine's cache ("1G", "4G"): every version of a document a snapshot still sees stays in
        #: it, so a session that rewrites near-16 MiB documents many times needs more than the default.
        self.cache_size = cache_size
        self.uri: Optional[str] = None
        self._proc: Optional[subprocess.Popen[str]] = None

    def start(self) -> str:
        if self._proc is not None:
            raise EmbeddedServerError("embedded server already started")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mongo_job_queue.dev.embedded", self.storage_path, self.cache_size],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._proc.stdout is not None
        line = _readline(self._proc.stdout, self.startup_timeout)
        if not line.startswith("mongodb://"):
            err = self._proc.stderr.read() if self._proc.stderr and self._proc.poll() is not None else ""
            self.stop()
            raise EmbeddedServerError(f"embedded server did not start: {(line + err).strip() or 'no output'}")
        self.uri = line.strip()
        # Drain stderr so a chatty server never blocks on a full pipe.
        threading.Thread(target=_drain, args=(self._proc.stderr,), daemon=True).start()
        return self.uri

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._owns_dir:
            shutil.rmtree(self.storage_path, ignore_errors=True)

    def __enter__(self) -> EmbeddedMongo:
        self.start()
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()


def _readline(stream: IO[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def _drain(stream: Optional[IO[str]]) -> None:
    if stream is not None:
        for _ in stream:
            pass


def _serve(storage_path: str, cache_size: str = "1G") -> int:
    try:
        from secantus import SecantusDBServer
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 3
    server = SecantusDBServer(
        host="127.0.0.1", port=0, storage_path=storage_path, enable_test_commands=True, cache_size=cache_size
    )
    server.start()
    try:
        print(server.uri, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin or dies
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(*sys.argv[1:3]))
