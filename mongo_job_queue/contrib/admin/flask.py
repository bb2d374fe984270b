"""Mount the admin UI in a Flask app as a blueprint, so ``authorize`` runs in Flask's request context.

::

    from mongo_job_queue.contrib.admin import create_admin_app
    from mongo_job_queue.contrib.admin.flask import admin_blueprint

    admin = create_admin_app(jobs.queue, authorize=lambda environ: role_of(flask_login.current_user))
    app.register_blueprint(admin_blueprint(admin), url_prefix="/admin/jobs")

(``DispatcherMiddleware`` works too, outside Flask's context: see docs/admin.rst.)
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from .app import AdminApp

__all__ = ["admin_blueprint"]


def admin_blueprint(admin: AdminApp, name: str = "mongo_job_queue_admin") -> Blueprint:
    """A blueprint that hands every GET and POST under its prefix to ``admin``."""
    blueprint = Blueprint(name, __name__)

    @blueprint.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @blueprint.route("/<path:path>", methods=["GET", "POST"])
    def view(path: str) -> Any:
        environ = dict(request.environ)
        mount = request.path[: len(request.path) - len(path)].rstrip("/")
        environ["SCRIPT_NAME"] = request.script_root + mount
        environ["PATH_INFO"] = "/" + path
        return Response.from_app(admin, environ)

    return blueprint
