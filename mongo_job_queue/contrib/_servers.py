"""Which pre-forking server runs this process, and in which role: what the integrations' boot decision needs.

Threads do not survive ``fork()``, so a worker must not start in a master
that imports the app and forks its serving processes afterwards (gunicorn
``--preload``, uWSGI without ``lazy-apps``). Under gunicorn the role shows
in the call stack while the app is imported: a worker imports it from the
arbiter's ``spawn_worker`` (after its fork), a ``--preload`` master from the
arbiter's setup. The log line of each process then says what is true of it.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Optional

from ._boot import Start, StartDecision

__all__ = ["gunicorn_role", "prefork_decision", "prefork_server"]

_ARBITER = "gunicorn.arbiter"
_IF_IT_SERVES = "it starts at this process's first request, if it serves any (a master that forks serves none)"


def prefork_server() -> Optional[str]:
    """The pre-forking server this process runs under, if one is recognised.

    Such a server may import the app in its master before forking the
    workers (gunicorn ``--preload``, uWSGI without ``lazy-apps``).
    """
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        return "gunicorn"
    if "uwsgi" in sys.modules:
        return "uWSGI"
    return None


def prefork_decision() -> Optional[StartDecision]:
    """When the worker starts in this process of a pre-forking server; None when no such server runs it.

    A gunicorn worker that imports the app itself (no ``--preload``) was
    forked already: it starts now. A gunicorn master that preloads the app,
    or a process whose role cannot be told, starts it lazily, at its first
    request: a master never serves one, and the workers it forks inherit the
    lazy start.
    """
    server = prefork_server()
    if server is None:
        return None
    if server == "gunicorn":
        role = gunicorn_role(sys._getframe(1))
        if role == "worker":
            return StartDecision(Start.NOW, "a gunicorn worker process, which imported the app after its fork")
        if role == "master":
            return StartDecision(
                Start.LAZY,
                "this is gunicorn's master process, which imports the app before it forks the workers (--preload) "
                "and serves no request",
                then="each worker process it forks starts its own at its first request",
            )
        return StartDecision(
            Start.LAZY,
            "under gunicorn, but not while it boots a process: this one may fork before it serves",
            then=_IF_IT_SERVES,
        )
    return StartDecision(
        Start.LAZY,
        f"under {server}, whose master imports the app before it forks the workers unless lazy-apps is set",
        then=_IF_IT_SERVES,
    )


def gunicorn_role(frame: Optional[FrameType]) -> Optional[str]:
    """``"worker"`` or ``"master"``: who is importing the app, read from the call stack at ``frame``; else None."""
    in_arbiter = False
    while frame is not None:
        if frame.f_globals.get("__name__") == _ARBITER:
            if frame.f_code.co_name == "spawn_worker":  # the forked child runs the worker from here
                return "worker"
            in_arbiter = True
        frame = frame.f_back
    return "master" if in_arbiter else None
