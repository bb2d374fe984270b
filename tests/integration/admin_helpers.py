"""A werkzeug test client for the admin UI that acts in a role and posts its forms with their CSRF token."""

from __future__ import annotations

import html
import re
from typing import Any, Optional

from werkzeug.datastructures import MultiDict
from werkzeug.test import Client, TestResponse

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM = re.compile(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', re.S)
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def forms_on(page: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each POST form of a page: its action and its hidden fields (the CSRF token left to the client)."""
    return [
        (html.unescape(action), [(k, html.unescape(v)) for k, v in HIDDEN.findall(body) if k != "csrf_token"])
        for action, body in FORM.findall(page)
    ]


def role_from_header(environ: Any) -> Optional[str]:
    """The test apps' authorize(): the role the client asks for in ``X-Role``."""
    return environ.get("HTTP_X_ROLE")


class AdminClient:
    """One browser: its cookie jar, and the token of the last page it read."""

    def __init__(self, app: Any, role: Optional[str], prefix: str = "", home: str = "/jobs/jobs") -> None:
        self.client = Client(app)
        self.role = role
        self.prefix = prefix
        self.home = home
        self.token: Optional[str] = None

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"X-Role": self.role} if self.role else {}
        headers.update(extra)
        return headers

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        response = self.client.get(self.prefix + path, headers=self.headers(), **kwargs)
        found = TOKEN.search(response.get_data(as_text=True))
        if found:
            self.token = found.group(1)
        return response

    def post(
        self, path: str, data: Any = None, *, token: Any = True, headers: Optional[dict[str, str]] = None
    ) -> TestResponse:
        if token is True:
            if self.token is None:
                self.get(self.home)
            token = self.token
        form = list(data.items()) if isinstance(data, dict) else list(data or [])
        if token:
            form.append(("csrf_token", token))
        default = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
        return self.client.post(
            self.prefix + path, data=MultiDict(form), headers=self.headers(**{**default, **(headers or {})})
        )
