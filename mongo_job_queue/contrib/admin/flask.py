"""Mount the admin UI in a Flask app as a blueprint, so ``authorize`` runs in Flask's request context.

::

    from mongo_job_queue.contrib.admin import create_admin_app
    from mongo_job_queue.contrib.admin.flask import admin_blueprint

    admin = create_admin_app(jobs.queue, authorize=lambda environ: role_of(flask_login.current_user))
    app.register_blueprint(admin_blueprint(admin), url_prefix="/admin/jobs")

(``DispatcherMiddleware`` works too, outside Flask's context: see docs/admin.rst.)

Every request under the prefix reaches the UI, whatever its method, so
that ``authorize`` decides about each (Flask would answer ``OPTIONS`` itself,
and refuse other methods before any check). Host names are Flask's to
check: set ``TRUSTED_HOSTS``, or give the app ``allowed_hosts``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from .app import AdminApp

__all__ = ["METHODS", "admin_blueprint"]

#: The methods routed to the UI (which answers 403 to a refused user, else 405 but to GET, HEAD and POST):
#: HTTP's own, PATCH, and WebDAV's.
METHODS = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT",
)  # fmt: skip


def admin_blueprint(admin: AdminApp, name: str = "mongo_job_queue_admin") -> Blueprint:
    """A blueprint that hands every request under its prefix to ``admin``."""
    blueprint = Blueprint(name, __name__)
    rule: dict[str, Any] = {"methods": METHODS, "provide_automatic_options": False}

    @blueprint.route("/", defaults={"path": ""}, **rule)
    @blueprint.route("/<path:path>", **rule)
    def view(path: str) -> Any:
        environ = dict(request.environ)
        mount = request.path[: len(request.path) - len(path)].rstrip("/")
        environ["SCRIPT_NAME"] = request.script_root + mount
        environ["PATH_INFO"] = "/" + path
        return Response.from_app(admin, environ)

    return blueprint
