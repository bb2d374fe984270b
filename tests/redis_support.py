"""Redis for the tests of ``mongo_job_queue.contrib.redis``: the shared server, and throwaway ones to restart.

The shared server is 127.0.0.1:6379 (``.ci/run`` starts it, ``.ci/redis.sh``
installs redis-server where it is missing). A test that restarts Redis
runs its own :class:`RedisServer` on a free port, so the shared one stays up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Optional

import pytest

SHARED_PORT = 6379


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_client() -> Any:
    """A client of the shared Redis; the test is skipped, saying why, when redis-py or the server is missing."""
    redis = pytest.importorskip("redis", reason="redis-py is not installed (the 'redis' extra)")
    client = redis.Redis(host="127.0.0.1", port=SHARED_PORT, socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at 127.0.0.1:{SHARED_PORT} (.ci/run starts one)")
    return client


def fresh_prefix() -> str:
    """A key prefix of its own per test, so tests sharing the server never meet."""
    return f"mjq-test-{uuid.uuid4().hex[:10]}:"


def forget(client: Any, prefix: str) -> None:
    """Delete a test's keys from the shared server."""
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


class RedisServer:
    """A throwaway redis-server that keeps nothing on disk: ``start()``, ``shutdown_nosave()``, ``start()`` again."""

    def __init__(self, data_dir: Optional[str] = None) -> None:
        """``data_dir``: keep RDB snapshots there (``SAVE`` writes one, a start loads it); None keeps nothing."""
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (.ci/redis.sh installs it)")
        self.port = _free_port()
        self.data_dir = data_dir
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        disk = ["--dir", self.data_dir] if self.data_dir is not None else []
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*command, *disk],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def shutdown_nosave(self) -> None:
        """What ``redis-cli -p PORT shutdown nosave`` does: the server exits and its data set is gone."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def crash(self) -> None:
        """SIGKILL: a restart then loads the last snapshot saved in ``data_dir``, older than what was served."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a stalled VM, a swapped-out host)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


class SlowProxy:
    """A TCP proxy to the shared Redis that delays each of its replies by ``delay`` seconds (a slow link or server)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Accept no more connections (those open end when a side closes them)."""
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", SHARED_PORT))
            threading.Thread(target=self._pipe, args=(conn, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)  # the point of the proxy: each reply arrives late
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                try:
                    end.close()
                except OSError:
                    pass
