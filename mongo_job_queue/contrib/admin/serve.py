"""The standalone server behind ``mongo-job-queue admin``: Werkzeug's, for local use.

It needs an ``authorize`` like any mounting; the only exception is
``insecure_local``, which lets every request from this machine in as
``admin`` and is refused unless the server binds a loopback address.

It answers only the host names it is reached by: on loopback, the
loopback names. A page on another name that its owner points at
127.0.0.1 (DNS rebinding) is same-origin with itself and sent from this
machine, so neither the origin check nor ``REMOTE_ADDR`` tells it apart:
its ``Host`` header does.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ...errors import ConfigError
from . import create_admin_app
from .security import LOOPBACK_HOSTS, Authorize, host_name

__all__ = ["loopback_only", "serve"]

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_only(environ: Mapping[str, Any]) -> Optional[str]:
    """``admin`` for a request from a loopback address, else refused: the ``--insecure-local`` authorize."""
    return "admin" if _is_loopback(str(environ.get("REMOTE_ADDR", ""))) else None


def serve(
    queue: Any,
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    insecure_local: bool = False,
    authorize: Optional[Authorize] = None,
    allowed_hosts: Optional[Sequence[str]] = None,
    **options: Any,
) -> None:
    """Serve the admin UI of ``queue`` until interrupted.

    Args:
        allowed_hosts: The host names clients reach the server by (any
            port; ``"*"`` for any). By default, on a loopback address,
            ``localhost``, ``127.0.0.1``, ``[::1]`` and ``host``; on any other
            address they must be given.
        options: Passed on to :func:`~mongo_job_queue.contrib.admin.create_admin_app`.

    Raises:
        ConfigError: neither ``authorize`` nor ``insecure_local``;
            ``insecure_local`` on an address other than loopback, or with a
            host name that is not loopback; no ``allowed_hosts`` off loopback.
    """
    from werkzeug.serving import run_simple

    if authorize is None:
        if not insecure_local:
            raise ConfigError("the admin server needs an authorize callable, or --insecure-local on a loopback address")
        if not _is_loopback(host):
            raise ConfigError(f"--insecure-local serves on a loopback address only, not {host!r}")
        authorize = loopback_only
        log.warning("admin UI without authentication on http://%s:%d/ (--insecure-local)", host, port)
    if allowed_hosts is None:
        if not _is_loopback(host):
            raise ConfigError(
                f"the admin server on {host!r} needs allowed_hosts: the names clients reach it by ('*' for any)"
            )
        allowed_hosts = [*LOOPBACK_HOSTS, host]
    elif insecure_local and not all(_is_loopback(host_name(name)) for name in allowed_hosts):
        raise ConfigError(f"--insecure-local answers loopback host names only, not {list(allowed_hosts)!r}")
    app = create_admin_app(queue, authorize=authorize, allowed_hosts=allowed_hosts, **options)
    run_simple(host, port, app, threaded=True, use_reloader=False)
