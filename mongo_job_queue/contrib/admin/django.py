"""Mount the admin UI in a Django project as a view, behind ``staff_member_required`` and Django's sessions.

::

    from django.contrib.admin.views.decorators import staff_member_required
    from django.urls import re_path
    from mongo_job_queue.contrib.admin import create_admin_app
    from mongo_job_queue.contrib.admin.django import admin_view, staff_role

    admin = create_admin_app(get_queue(), authorize=staff_role)
    urlpatterns = [re_path(r"^jobs-admin/(?P<path>.*)$", staff_member_required(admin_view(admin)))]

The UI checks its own CSRF token and Origin, so the view is exempt from
Django's CSRF middleware (whose token the UI's forms do not carry). Host
names are Django's to check: the view asks for ``request.get_host()``,
which refuses (400) a name not in ``ALLOWED_HOSTS``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any, Optional

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from werkzeug.test import run_wsgi_app

from .app import AdminApp

__all__ = ["REQUEST_KEY", "admin_view", "staff_role"]

#: The environ key under which ``authorize`` finds the Django request (and its ``user``).
REQUEST_KEY = "django.request"


def staff_role(environ: Mapping[str, Any]) -> Optional[str]:
    """Superusers are ``admin``, other active staff ``operator``; everyone else is refused."""
    request = environ.get(REQUEST_KEY)
    user = getattr(request, "user", None)
    if user is None or not user.is_active:
        return None
    if user.is_superuser:
        return "admin"
    return "operator" if user.is_staff else None


def admin_view(admin: AdminApp) -> Callable[..., HttpResponse]:
    """A Django view (for ``re_path(r"^prefix/(?P<path>.*)$", ...)``) that runs ``admin`` on the request."""

    def view(request: HttpRequest, path: str = "") -> HttpResponse:
        request.get_host()  # raises DisallowedHost (400) for a Host not in ALLOWED_HOSTS: no DNS rebinding
        environ = dict(request.environ)
        body = request.body
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        mount = request.path_info[: len(request.path_info) - len(path)].rstrip("/")
        environ["SCRIPT_NAME"] = request.META.get("SCRIPT_NAME", "") + mount
        environ["PATH_INFO"] = "/" + path
        environ[REQUEST_KEY] = request
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            environ["mongo_job_queue.admin.user"] = user.get_username()
        app_iter, status, headers = run_wsgi_app(admin, environ, buffered=True)
        response = HttpResponse(b"".join(app_iter), status=int(status.split()[0]))
        for name, value in headers.items():
            response[name] = value
        return response

    exempt: Callable[..., HttpResponse] = csrf_exempt(view)
    return exempt
