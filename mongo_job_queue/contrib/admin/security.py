"""Who may do what, and the checks every request passes: roles, CSRF tokens, Origin, security headers.

Deny by default: a request whose ``authorize(environ)`` returns no known
role gets 403 before any view runs. Every state change is a POST that
carries a signed token bound to an HttpOnly, SameSite=Strict cookie, and
comes from this origin (``Origin`` and ``Sec-Fetch-Site``). With
``allowed_hosts``, a request naming another host (a DNS-rebinding page, whose
origin is its own name pointed at this server) is refused before anything.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

from itsdangerous import BadSignature, URLSafeTimedSerializer

__all__ = [
    "ACTIONS",
    "LOOPBACK_HOSTS",
    "ROLES",
    "Authorize",
    "CsrfTokens",
    "allowed",
    "host_allowed",
    "host_name",
    "origin_problem",
    "security_headers",
]

#: ``authorize(environ) -> "viewer" | "operator" | "admin" | None``; None (or anything else) is refused.
Authorize = Callable[[Mapping[str, Any]], Optional[str]]

#: Each role, and the actions it may take on top of the roles below it.
ROLES: dict[str, tuple[str, ...]] = {
    # Every page: dashboard, jobs, job detail, schedules, workers, audit.
    "viewer": ("view",),
    # Day-to-day steering of single jobs and selections.
    "operator": ("retry", "cancel", "run_now", "fire_schedule"),
    # Destructive or queue-wide: delete, every job matching a filter, pause and resume.
    "admin": ("delete", "bulk_filter", "pause", "resume"),
}
_ORDER = list(ROLES)

#: Every action, for the documentation and the permission tests.
ACTIONS: tuple[str, ...] = tuple(action for actions in ROLES.values() for action in actions)

#: How long a form stays valid.
TOKEN_MAX_AGE_S = 8 * 3600
#: The cookie that a form's token is bound to.
CSRF_COOKIE = "mjq_admin_csrf"


def allowed(role: Optional[str], action: str) -> bool:
    """Whether ``role`` may take ``action``: its own actions and those of every lower role."""
    if role not in ROLES:
        return False
    return any(action in ROLES[r] for r in _ORDER[: _ORDER.index(role) + 1])


class CsrfTokens:
    """Signed form tokens bound to a random per-browser cookie (signed double submit).

    No server-side session: the token is the cookie's value signed with the
    app's secret and a time, so a forged form lacks the signature and a
    stolen token without the (HttpOnly) cookie is useless.
    """

    def __init__(self, secret: bytes) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="mongo-job-queue-admin-csrf")

    @staticmethod
    def new_cookie_value() -> str:
        return secrets.token_urlsafe(24)

    def token_for(self, cookie_value: str) -> str:
        return self._signer.dumps(cookie_value)

    def valid(self, token: Optional[str], cookie_value: Optional[str]) -> bool:
        if not token or not cookie_value or len(token) > 500:
            return False
        try:
            bound = self._signer.loads(token, max_age=TOKEN_MAX_AGE_S)
        except BadSignature:
            return False
        return isinstance(bound, str) and hmac.compare_digest(bound, cookie_value)


#: The names by which a browser on this machine reaches a server bound to loopback.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_name(host: str) -> str:
    """``host`` (a ``Host`` header or a configured name) without its port, lower case, IPv6 in brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 address, as given to bind
        return f"[{host}]"
    return host.partition(":")[0].rstrip(".")


def host_allowed(environ: Mapping[str, Any], allowed: Iterable[str]) -> bool:
    """Whether the request's ``Host`` (any port) is one of ``allowed`` (names, or ``"*"`` for any)."""
    names = {host_name(name) for name in allowed}
    if "*" in names:
        return True
    host = host_name(str(environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""))
    return bool(host) and host in names


def own_origin(environ: Mapping[str, Any]) -> str:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return f"{scheme}://{host}".lower()


def origin_problem(environ: Mapping[str, Any]) -> Optional[str]:
    """Why a POST is not from this origin, or None.

    ``Sec-Fetch-Site`` (sent by every current browser) must be ``same-origin``;
    ``Origin``, when present, must be this server's own. A client that sends
    neither (curl, a script) is no browser a page could drive: its POST still
    needs the token and the cookie.
    """
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None and site != "same-origin":
        return f"cross-site request (Sec-Fetch-Site: {site})"
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and origin.lower() != own_origin(environ):
        return "cross-origin request (Origin does not match this server)"
    return None


def security_headers(nonce: str) -> list[tuple[str, str]]:
    """The headers of every response: a nonce CSP with no ``unsafe-inline``, no framing, no referrer."""
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'self' 'nonce-{nonce}'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )
    return [
        ("Content-Security-Policy", csp),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-store"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
