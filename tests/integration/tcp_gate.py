"""A loopback TCP forwarder that can be closed and opened: MongoDB unreachable, then back.

While closed it accepts connections and drops them at once, as a server
that is down or firewalled would fail a driver; while open it forwards
bytes both ways to the real server. Only for tests.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional


class TcpGate:
    """Listens on ``127.0.0.1:port`` and forwards to ``target`` while :attr:`open`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.is_open = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-gate", daemon=True)
        self._thread.start()

    def open(self) -> None:
        self.is_open.set()

    def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        self.is_open.clear()
        self._cut()

    def stop(self) -> None:
        self._stopped.set()
        self.close()
        self._listener.close()
        self._thread.join(timeout=10)

    def _cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.is_open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        data: Optional[bytes] = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
