"""The standalone server behind ``mongo-job-queue admin``: Werkzeug's, for local use.

It needs an ``authorize`` like any mounting; the only exception is
``insecure_local``, which lets every request from this machine in as
``admin`` and is refused unless the server binds a loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any, Optional

from ...errors import ConfigError
from . import create_admin_app
from .security import Authorize

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
    **options: Any,
) -> None:
    """Serve the admin UI of ``queue`` until interrupted.

    Raises:
        ConfigError: neither ``authorize`` nor ``insecure_local``, or
            ``insecure_local`` on an address other than loopback.
    """
    from werkzeug.serving import run_simple

    if authorize is None:
        if not insecure_local:
            raise ConfigError("the admin server needs an authorize callable, or --insecure-local on a loopback address")
        if not _is_loopback(host):
            raise ConfigError(f"--insecure-local serves on a loopback address only, not {host!r}")
        authorize = loopback_only
        log.warning("admin UI without authentication on http://%s:%d/ (--insecure-local)", host, port)
    app = create_admin_app(queue, authorize=authorize, **options)
    run_simple(host, port, app, threaded=True, use_reloader=False)
