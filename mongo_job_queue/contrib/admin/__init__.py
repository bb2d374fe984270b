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

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from ...errors import ConfigError
from .app import AdminApp, Identify, Redact, default_identify
from .security import ACTIONS, ROLES, Authorize, allowed

__all__ = ["ACTIONS", "ROLES", "AdminApp", "Authorize", "allowed", "create_admin_app"]


def create_admin_app(
    queue_or_queues: Union[Any, Sequence[Any], Mapping[str, Any]],
    authorize: Optional[Authorize] = None,
    *,
    identify: Identify = default_identify,
    filter_fields: Sequence[str] = (),
    redact: Optional[Redact] = None,
    secret_key: Optional[Union[str, bytes]] = None,
    refresh_s: int = 5,
    title: str = "Job queue",
    allowed_hosts: Optional[Sequence[str]] = None,
) -> AdminApp:
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
            equality); each must be the first key of an index of the model.
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
        ConfigError: no ``authorize``, no queue, or a filter field without an index.
    """
    if authorize is None or not callable(authorize):
        raise ConfigError(
            "create_admin_app() needs authorize=callable(environ) -> 'viewer' | 'operator' | 'admin' | None: "
            "the admin UI never runs open (for a local try, `mongo-job-queue admin --insecure-local`)"
        )
    if isinstance(queue_or_queues, Mapping):
        queues = dict(queue_or_queues)
    elif isinstance(queue_or_queues, (list, tuple)):
        queues = {q.job_model._get_collection_name(): q for q in queue_or_queues}
    else:
        single: Any = queue_or_queues
        queues = {single.job_model._get_collection_name(): single}
    if not queues:
        raise ConfigError("create_admin_app() needs at least one queue")
    key = secret_key.encode() if isinstance(secret_key, str) else secret_key
    app = AdminApp(
        queues,
        authorize=authorize,
        identify=identify,
        filter_fields=filter_fields,
        redact=redact,
        secret_key=key,
        refresh_s=refresh_s,
        title=title,
        allowed_hosts=allowed_hosts,
    )
    for handle in app.handles.values():
        try:
            handle.jobs.check_fields()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return app
