"""An admin web UI for the queue: one WSGI app to mount in Flask or Django, or to serve standalone.

Needs the ``admin`` extra (``python -m pip install '.[admin]'`` in a checkout:
Jinja2, Werkzeug, itsdangerous). See docs/admin.rst for mounting, the
roles and the security model::

    from mongo_job_queue.contrib.admin import create_admin_app

    admin = create_admin_app(queue, authorize=lambda environ: "viewer")
"""

from __future__ import annotations

from ...extras import missing_extra

try:
    import itsdangerous  # noqa: F401
    import jinja2  # noqa: F401
    import werkzeug  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_extra(__name__, "Jinja2, Werkzeug and itsdangerous", "admin") from exc

from typing import Any

from ...forwarding import signature_of
from .app import AdminApp
from .security import ACTIONS, ROLES, Authorize, allowed

__all__ = ["ACTIONS", "ROLES", "AdminApp", "Authorize", "allowed", "create_admin_app"]


@signature_of(AdminApp)
def create_admin_app(*args: Any, **kwargs: Any) -> AdminApp:
    """The admin UI of one queue or several, as a WSGI app.

    Args:
        queue_or_queues: A :class:`~mongo_job_queue.PersistentJobQueue`, a list of
            them (named by their collections) or a mapping of names to them.
        authorize: ``authorize(environ) -> "viewer" | "operator" | "admin" | None``,
            called on every request; None refuses it (403). Required: there is
            no default that lets anyone in.
        identify: ``identify(environ) -> str``, who is acting, for the audit
            log; by default the ``mongo_job_queue.admin.user`` environ key set by
            the Flask and Django mountings, else ``REMOTE_USER``.
        filter_fields: The app's own fields the job list may filter on (by
            equality, the value converted by the field as the CLI's ``--field``
            converts it: an ``IntField`` compares ``5``); each must be a field
            the model declares itself and the first key of one of its indexes.
        redact: ``redact(job_document) -> document`` applied before a job's
            data, result and headers are shown (mask secrets here).
        secret_key: Signs the CSRF tokens. Random per process by default, so
            give one when several processes serve the UI behind one address.
        refresh_s: Live refresh interval of the dashboard and job pages (2 to 300 s).
        title: Shown in the page header.
        allowed_hosts: The host names (``Host`` header, any port) the UI
            answers; any other is refused (400), so a DNS-rebinding page
            cannot reach it. ``"*"`` for any. None (the default) leaves the
            check to the mounting: Flask's ``TRUSTED_HOSTS``, Django's
            ``ALLOWED_HOSTS``; the standalone server passes the loopback names.

    Raises:
        ConfigError: no ``authorize``, no queue, or a filter field that is not the model's own or has no index.
    """
    return AdminApp(*args, **kwargs)
