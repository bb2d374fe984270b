"""fork() safety: a MongoClient must not cross ``fork()``, so a child drops what it inherited, and only that.

A client's sockets and monitor threads belong to the parent. MongoEngine
caches the client per alias (and each model caches its collection), so a
child drops those caches, without closing the parent's sockets, and
MongoEngine reconnects from the alias's saved settings. The handle
(:class:`~.handle.JobStore`) calls :func:`forget_inherited_client` on its
first use in a new process.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

import mongoengine.connection

__all__ = ["ForkAware", "forget_inherited_client", "watch"]


class ForkAware(Protocol):
    """What the after-fork hook needs of a live store: its model, and a way to renew its locks."""

    @property
    def model(self) -> Any: ...

    def after_fork_in_child(self) -> None: ...


#: The clients that came across fork() into this process (MongoEngine's, and
#: those the live stores' models cached), by identity, recorded by the
#: after-fork hook; kept referenced so they are never finalised here.
_inherited_clients: list[Any] = []
#: The pid in which that hook last ran.
_hooked_pid: int | None = None
#: Without the hook (a fork from C code): what each process has dropped, by
#: ("alias", name) and ("model", class), with the pid that dropped it.
_forgotten_in: dict[tuple[str, Any], int] = {}
_fork_lock = threading.Lock()
_live_stores: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def watch(store: ForkAware) -> int | None:
    """Register a new store with the after-fork hook; return the pid whose clients it may use (None: check now).

    In a forked child even a new store must check what it would inherit.
    """
    _live_stores.add(store)
    return None if _hooked_pid == os.getpid() else os.getpid()


def forget_inherited_client(model: Any) -> int:
    """Drop what the parent's client left behind for ``model`` in this process; return this process's pid.

    Several stores (queues, models) share one alias: the second store in
    a child must not drop the client the first has just created there,
    which would leak it and its monitor threads. So what is dropped is
    the very client that came across fork(); where the after-fork hook
    did not run (a fork from C code), each alias and model is reset once
    per process instead.
    """
    alias = model._meta.get("db_alias") or mongoengine.DEFAULT_CONNECTION_NAME
    pid = os.getpid()
    with _fork_lock:
        if _hooked_pid == pid:
            if _is_inherited(mongoengine.connection._connections.get(alias)):
                mongoengine.connection._connections.pop(alias, None)
                mongoengine.connection._dbs.pop(alias, None)
            cached = model._collection
            if cached is not None and _is_inherited(cached.database.client):
                model._collection = None
        else:
            if _forgotten_in.get(("alias", alias)) != pid:
                mongoengine.connection._connections.pop(alias, None)
                mongoengine.connection._dbs.pop(alias, None)
                _forgotten_in[("alias", alias)] = pid
            if _forgotten_in.get(("model", model)) != pid:
                model._collection = None  # holds the parent's client
                _forgotten_in[("model", model)] = pid
    return pid


def _reset_after_fork() -> None:
    global _fork_lock, _hooked_pid
    _fork_lock = threading.Lock()
    _hooked_pid = os.getpid()
    _inherited_clients.extend(mongoengine.connection._connections.values())
    for store in list(_live_stores):
        cached = store.model._collection
        if cached is not None:
            _inherited_clients.append(cached.database.client)
        store.after_fork_in_child()


def _is_inherited(client: Any) -> bool:
    return any(client is inherited for inherited in _inherited_clients)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
