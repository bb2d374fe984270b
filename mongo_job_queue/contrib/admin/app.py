"""The admin WSGI app: every request is authorized, every response carries the security headers.

The pipeline, in order: with ``allowed_hosts``, the ``Host`` must be one
of them (400); ``authorize(environ)`` gives a role or the request is
refused (403); a POST must come from this origin and carry a valid CSRF
token, and its action must be allowed to the role (a refusal of a known
user is audited); then the view runs and its page is rendered by Jinja2
with autoescape, its scripts (bundled files only) carrying the response's
CSP nonce. Whatever a view raises, the answer is a page with every header.
"""

from __future__ import annotations

import logging
import mimetypes
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional, Union
from urllib.parse import urlencode

import jinja2
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.wrappers import Request, Response

from ...errors import ConfigError
from ...store.faults import short_error
from ...store.workers import WorkerDocs
from .audit import AuditLog
from .data import ActionFailed, AdminJobs
from .filters import FilterError, clamp_int
from .reads import AdminReads, TooSlow, Unavailable
from .security import CSRF_COOKIE, ROLES, Authorize, CsrfTokens, allowed, host_allowed, origin_problem, security_headers

__all__ = ["AdminApp", "Ctx", "QueueHandle"]

log = logging.getLogger(__name__)

#: Receives a job's document as stored; returns what the pages may show (e.g. with secrets masked).
Redact = Callable[[dict[str, Any]], dict[str, Any]]
Identify = Callable[[Mapping[str, Any]], str]

STATIC_FILES = frozenset(
    {"htmx.min.js", "uplot.iife.min.js", "uplot.min.css", "admin.js", "admin.css", "htmx.LICENSE", "uplot.LICENSE"}
)
DEFAULT_REFRESH_S = 5
MIN_REFRESH_S, MAX_REFRESH_S = 2, 300


@dataclass
class QueueHandle:
    """One queue as the UI sees it: the queue's public API plus the UI's own data access."""

    name: str
    queue: Any
    reads: AdminReads
    jobs: AdminJobs
    audit: AuditLog
    workers: WorkerDocs

    @classmethod
    def of(cls, name: str, queue: Any, filter_fields: Sequence[str]) -> QueueHandle:
        """Everything through the queue's store: reads tried once (:class:`.reads.AdminReads`), writes retried."""
        reads = AdminReads(queue.store)
        jobs = AdminJobs(queue.store, reads, filter_fields)
        return cls(name, queue, reads, jobs, AuditLog(queue.store, reads), queue.store.workers)


@dataclass
class Ctx:
    """What a view gets about its request."""

    request: Request
    role: str
    who: str
    nonce: str
    csrf_cookie: str
    new_cookie: bool
    handle: Optional[QueueHandle] = None
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def can(self, action: str) -> bool:
        return allowed(self.role, action)


def default_identify(environ: Mapping[str, Any]) -> str:
    return str(environ.get("mongo_job_queue.admin.user") or environ.get("REMOTE_USER") or "unknown")


def _named(queue_or_queues: Union[Any, Sequence[Any], Mapping[str, Any]]) -> dict[str, Any]:
    """The queues by the names the UI shows: a mapping's keys, else each queue's collection name."""
    if isinstance(queue_or_queues, Mapping):
        return dict(queue_or_queues)
    queues: Sequence[Any] = queue_or_queues if isinstance(queue_or_queues, (list, tuple)) else [queue_or_queues]
    return {queue.job_model._get_collection_name(): queue for queue in queues}


class AdminApp:
    """The WSGI application returned by :func:`~mongo_job_queue.contrib.admin.create_admin_app`."""

    def __init__(
        self,
        queue_or_queues: Union[Any, Sequence[Any], Mapping[str, Any]],
        authorize: Optional[Authorize] = None,
        *,
        identify: Identify = default_identify,
        filter_fields: Sequence[str] = (),
        redact: Optional[Redact] = None,
        secret_key: Optional[Union[str, bytes]] = None,
        refresh_s: int = DEFAULT_REFRESH_S,
        title: str = "Job queue",
        allowed_hosts: Optional[Sequence[str]] = None,
    ) -> None:
        if authorize is None or not callable(authorize):
            raise ConfigError(
                "create_admin_app() needs authorize=callable(environ) -> 'viewer' | 'operator' | 'admin' | None: "
                "the admin UI never runs open (for a local try, `mongo-job-queue admin --insecure-local`)"
            )
        queues = _named(queue_or_queues)
        if not queues:
            raise ConfigError("create_admin_app() needs at least one queue")
        self.handles = {name: QueueHandle.of(name, q, filter_fields) for name, q in queues.items()}
        for handle in self.handles.values():
            try:
                handle.jobs.check_fields()
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        #: The ``Host`` names this app answers (any port); None leaves the check to the mounting's framework.
        self.allowed_hosts = None if allowed_hosts is None else tuple(allowed_hosts)
        self.authorize = authorize
        self.identify = identify
        self.filter_fields = list(filter_fields)
        self.redact = redact
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        self.tokens = CsrfTokens(key or secrets.token_bytes(32))
        self.refresh_s = clamp_int(str(refresh_s), DEFAULT_REFRESH_S, MIN_REFRESH_S, MAX_REFRESH_S)
        self.title = title
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("mongo_job_queue.contrib.admin", "templates"),
            autoescape=True,
            undefined=jinja2.ChainableUndefined,
        )
        from . import actions, views  # the views import this module's Ctx

        self.views: dict[str, Callable[..., Response]] = {**views.VIEWS, **actions.ACTIONS_VIEWS}
        self.env.globals.update(age=views.age)
        self.url_map = Map(
            [
                Rule("/", endpoint="index"),
                Rule("/static/<name>", endpoint="static"),
                Rule("/<q>/", endpoint="dashboard"),
                Rule("/<q>/jobs", endpoint="jobs"),
                Rule("/<q>/jobs/<job_id>", endpoint="job"),
                Rule("/<q>/schedules", endpoint="schedules"),
                Rule("/<q>/audit", endpoint="audit"),
                Rule("/<q>/jobs/<job_id>/<action>", endpoint="job_action", methods=["POST"]),
                Rule("/<q>/bulk", endpoint="bulk", methods=["POST"]),
                Rule("/<q>/pause", endpoint="pause", methods=["POST"]),
                Rule("/<q>/schedules/fire", endpoint="fire", methods=["POST"]),
            ],
            strict_slashes=True,
        )

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = 256 * 1024
        request.max_form_memory_size = 256 * 1024
        nonce = secrets.token_urlsafe(16)
        try:
            response = self._handle(request, nonce)
        except RequestRedirect as exc:  # a missing slash, a doubled one: the canonical URL, under the mount
            response = exc.get_response(environ)
        except HTTPException as exc:
            response = self._error(exc.code or 500, exc.description or exc.name, nonce)
        except Exception:
            log.exception("admin %s %s failed", request.method, request.path)
            response = self._error(500, "The request failed; the server's log says why.", nonce)
        for name, value in security_headers(nonce):
            if name != "Cache-Control" or name not in response.headers:
                response.headers[name] = value
        return response(environ, start_response)

    def _handle(self, request: Request, nonce: str) -> Response:
        if self.allowed_hosts is not None and not host_allowed(request.environ, self.allowed_hosts):
            log.warning("admin request for host %r refused (not in allowed_hosts)", request.environ.get("HTTP_HOST"))
            return self._error(400, "This server does not answer to that host name.", nonce)
        try:
            role = self.authorize(request.environ)
        except Exception:
            log.exception("admin authorize() raised; the request is refused")
            role = None
        if role not in ROLES:
            return self._error(403, "You are not allowed to see this page.", nonce)
        cookie = request.cookies.get(CSRF_COOKIE)
        new_cookie = cookie is None or not (10 <= len(cookie) <= 100)
        ctx = Ctx(
            request=request,
            role=str(role),
            who=self.identify(request.environ),
            nonce=nonce,
            csrf_cookie=CsrfTokens.new_cookie_value() if new_cookie else str(cookie),
            new_cookie=new_cookie,
        )
        adapter = self.url_map.bind_to_environ(request.environ)
        endpoint, values = adapter.match()
        values = dict(values)
        if "q" in values:
            ctx.handle = self.handles.get(values.pop("q"))
            if ctx.handle is None:
                raise NotFound("No such queue.")
        if request.method == "POST":
            refused = origin_problem(request.environ)
            if refused is None and not self.tokens.valid(request.form.get("csrf_token"), cookie):
                refused = "missing or invalid CSRF token (reload the page and try again)"
            if refused is not None:
                log.warning("admin POST %s refused: %s", request.path, refused)
                self.audit_refusal(ctx, str(values.get("action", endpoint)), f"POST {request.path}", refused)
                return self._error(403, f"Refused: {refused}.", nonce)
        elif request.method not in ("GET", "HEAD"):
            return self._error(405, "Method not allowed.", nonce)
        try:
            response = self.views[endpoint](self, ctx, **values)
        except FilterError as exc:
            response = self.render(ctx, "error.html", status=400, message=str(exc))
        except (TooSlow, Unavailable) as exc:
            response = self.render(ctx, "error.html", status=503, message=str(exc))
        except ActionFailed as exc:
            message = f"The action stopped part-way ({short_error(exc.cause)}); the audit trail says how far it got."
            response = self.render(ctx, "error.html", status=500, message=message)
        if ctx.new_cookie:
            response.set_cookie(
                CSRF_COOKIE,
                ctx.csrf_cookie,
                httponly=True,
                samesite="Strict",
                secure=request.scheme == "https",
                path=request.script_root or "/",
            )
        return response

    def audit_refusal(self, ctx: Ctx, action: str, target: str, reason: str) -> None:
        """Record a refused state change of a known user; never raises (the refusal stands either way)."""
        if ctx.handle is None:
            return
        try:
            ctx.handle.audit.record(
                who=ctx.who, role=ctx.role, action=action[:100], target=target, count=0, detail=f"refused: {reason}"
            )
        except Exception:
            log.warning("admin: the refusal of %s by %s could not be audited", action, ctx.who, exc_info=True)

    # -- rendering ----------------------------------------------------------

    def url(self, ctx: Ctx, endpoint: str, params: Iterable[tuple[str, str]] = (), **values: Any) -> str:
        if ctx.handle is not None and endpoint not in ("index", "static"):
            values.setdefault("q", ctx.handle.name)
        path = self.url_map.bind("localhost", script_name=ctx.request.script_root or "/").build(endpoint, values)
        query = urlencode(list(params))
        return f"{path}?{query}" if query else path

    def render(self, ctx: Ctx, template: str, *, status: int = 200, **context: Any) -> Response:
        def url(endpoint: str, params: Iterable[tuple[str, str]] = (), **values: Any) -> str:
            return self.url(ctx, endpoint, params, **values)

        page = self.env.get_template(template).render(
            ctx=ctx,
            title=self.title,
            queues=list(self.handles),
            queue_name=ctx.handle.name if ctx.handle else None,
            csrf_token=self.tokens.token_for(ctx.csrf_cookie),
            url=url,
            can=ctx.can,
            refresh_s=self.refresh_s,
            **context,
        )
        response = Response(page, status=status, mimetype="text/html")
        response.headers.extend(ctx.extra_headers)
        return response

    def _error(self, status: int, message: str, nonce: str) -> Response:
        page = self.env.get_template("denied.html").render(status=status, message=message, nonce=nonce)
        return Response(page, status=status, mimetype="text/html")

    def static(self, name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound()
        body = (resources.files("mongo_job_queue.contrib.admin") / "static" / name).read_bytes()
        kind = mimetypes.guess_type(name)[0] or "text/plain"
        response = Response(body, mimetype=kind)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response
