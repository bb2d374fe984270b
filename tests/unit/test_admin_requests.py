"""The admin UI's request handling that needs no database: parameters, hosts, errors, redirects, mountings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jinja2")

from werkzeug.test import Client

import mongo_job_queue
from mongo_job_queue import ConfigError
from mongo_job_queue.contrib.admin import create_admin_app
from mongo_job_queue.contrib.admin import serve as serve_module
from mongo_job_queue.contrib.admin.filters import JobFilter, clamp_int

NOW = datetime(2024, 1, 1, 12, 0)
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy", "X-Content-Type-Options")


def as_role(role: str = "viewer") -> Any:
    return lambda environ: role


@pytest.mark.parametrize("text", ["\u00b2", "\u2460", "\u0663", "1\u00b2", "-\u00b9", "1e3", " ", "0x1"])
def test_only_ascii_digits_are_a_number(text: str) -> None:
    assert clamp_int(text, 7, 1, 100) == 7


def test_a_number_is_clamped() -> None:
    assert (clamp_int("42", 7, 1, 100), clamp_int("-5", 7, 1, 100), clamp_int("9" * 40, 7, 1, 100)) == (42, 1, 100)


def test_an_aware_time_beyond_the_datetime_range_in_utc_is_clamped() -> None:
    low = JobFilter.parse({"created_from": "0001-01-01T00:00+01:00"}, [], NOW)
    high = JobFilter.parse({"created_to": "9999-12-31T23:59-01:00"}, [], NOW)
    assert low.created_from == datetime(2000, 1, 1)
    assert high.created_to == NOW + timedelta(days=1)


def test_a_view_that_raises_is_a_500_page_with_every_security_header(queue) -> None:
    app = create_admin_app(queue, authorize=as_role())

    def broken(app: Any, ctx: Any) -> Any:
        raise RuntimeError("a bug")

    app.views["dashboard"] = broken
    response = Client(app).get("/unit_org_jobs/")
    assert response.status_code == 500 and "a bug" not in response.get_data(as_text=True)
    assert all(name in response.headers for name in HEADERS)


def test_a_redirect_carries_its_location_and_the_headers(queue) -> None:
    response = Client(create_admin_app(queue, authorize=as_role())).get("/unit_org_jobs")
    assert response.status_code == 308 and response.headers["Location"].endswith("/unit_org_jobs/")
    assert all(name in response.headers for name in HEADERS)


def test_allowed_hosts_refuses_any_other_host_before_authorize(queue) -> None:
    calls: list[str] = []

    def authorize(environ: Any) -> str:
        calls.append(environ["HTTP_HOST"])
        return "viewer"

    client = Client(create_admin_app(queue, authorize=authorize, allowed_hosts=["admin.example.com"]))
    for host in ("evil.example", "admin.example.com.evil.example", "example.com"):
        response = client.get("/static/admin.js", headers={"Host": host})
        assert response.status_code == 400 and all(name in response.headers for name in HEADERS)
    assert calls == []
    for host in ("admin.example.com", "ADMIN.example.com:8443"):
        assert client.get("/static/admin.js", headers={"Host": host}).status_code == 200
    assert (
        Client(create_admin_app(queue, authorize=authorize, allowed_hosts=["*"]))
        .get("/static/admin.js", headers={"Host": "any.example"})
        .status_code
        == 200
    )


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What serve() hands to Werkzeug's server, instead of serving."""
    import werkzeug.serving

    got: dict[str, Any] = {}
    monkeypatch.setattr(werkzeug.serving, "run_simple", lambda host, port, app, **kw: got.update(app=app, host=host))
    return got


def test_insecure_local_answers_loopback_host_names_only(queue, served) -> None:
    serve_module.serve(queue, "127.0.0.1", 8089, insecure_local=True)
    client = Client(served["app"])
    local = {"REMOTE_ADDR": "127.0.0.1"}  # a DNS-rebinding page's requests come from this machine too
    rebound = client.get("/static/admin.js", headers={"Host": "rebind.attacker.example:8089"}, environ_overrides=local)
    assert rebound.status_code == 400
    for host in ("127.0.0.1:8089", "localhost:8089", "[::1]:8089", "LOCALHOST"):
        assert client.get("/static/admin.js", headers={"Host": host}, environ_overrides=local).status_code == 200, host


def test_the_standalone_server_needs_its_host_names_off_loopback(queue, served) -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        serve_module.serve(queue, "0.0.0.0", 8089, authorize=as_role())
    with pytest.raises(ConfigError, match="loopback host names"):
        serve_module.serve(queue, "127.0.0.1", 8089, insecure_local=True, allowed_hosts=["jobs.example.com"])
    serve_module.serve(queue, "0.0.0.0", 8089, authorize=as_role(), allowed_hosts=["jobs.example.com"])
    client = Client(served["app"])
    assert client.get("/static/admin.js", headers={"Host": "jobs.example.com"}).status_code == 200
    assert client.get("/static/admin.js", headers={"Host": "localhost"}).status_code == 400


def test_the_flask_blueprint_hands_every_method_to_authorize(queue) -> None:
    flask = pytest.importorskip("flask")
    from mongo_job_queue.contrib.admin.flask import admin_blueprint

    calls: list[str] = []

    def nobody(environ: Any) -> None:
        calls.append(environ["REQUEST_METHOD"])

    app = flask.Flask("mounted")
    app.register_blueprint(admin_blueprint(create_admin_app(queue, authorize=nobody)), url_prefix="/admin")
    client = app.test_client()
    methods = ["GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH", "PROPFIND"]
    for method in methods:
        for path in ("/admin/", "/admin/unit_org_jobs/jobs", "/admin/static/admin.js"):
            response = client.open(path, method=method)
            assert response.status_code == 403, (method, path, response.status_code)
            assert all(name in response.headers for name in HEADERS), (method, path)
    assert sorted(set(calls)) == sorted(methods)


def test_the_django_view_defers_to_allowed_hosts(tmp_path: Path) -> None:
    pytest.importorskip("django")
    script = textwrap.dedent(
        """
        from django.conf import settings
        settings.configure(ALLOWED_HOSTS=["jobs.example.com"], MIDDLEWARE=[])
        import django
        django.setup()
        from django.core.exceptions import DisallowedHost
        from django.test import RequestFactory
        from mongo_job_queue.contrib.admin.django import admin_view

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ui"]

        view = admin_view(app)
        assert view(RequestFactory().get("/jobs-admin/", HTTP_HOST="jobs.example.com"), "").status_code == 200
        try:
            view(RequestFactory().get("/jobs-admin/", HTTP_HOST="rebind.attacker.example"), "")
        except DisallowedHost:
            print("refused")
        """
    )
    # Its own process, for Django's settings; importing the package this process tests.
    root = str(Path(mongo_job_queue.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"
