"""The admin UI mounted in the example apps, in a real browser: Flask's blueprint and Django's staff-only view."""

from __future__ import annotations

import base64

import pytest

from .servers import enqueue_examples, gated_uri, serve, wait_finished
from .test_django_example import PROJECT, RUNSERVER, manage
from .test_flask_example import FLASK

__all__ = ["gated_uri", "serve"]

pytestmark = pytest.mark.integration


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def pause_queue_from_the_dashboard(page, name: str) -> None:
    page.fill('form[action$="/pause"] input[name="name"]', name)
    page.click('form[action$="/pause"] button[value="pause"]')
    assert page.locator(".notice").inner_text() == "Paused."


def test_the_flask_example_serves_the_ui_under_its_blueprint(serve, chromium, raw_db) -> None:
    server = serve([*FLASK, "run", "--host", "127.0.0.1", "--port", "{port}"], env={"EXAMPLE_ADMIN_PASSWORD": "s3cret"})
    jobs = wait_finished(server, enqueue_examples(server))
    base = f"http://127.0.0.1:{server.port}/admin/jobs"
    refused = chromium.new_context(extra_http_headers=basic("admin", "wrong")).new_page()
    assert refused.goto(f"{base}/").status == 403
    page = chromium.new_context(extra_http_headers=basic("admin", "s3cret")).new_page()
    page.goto(f"{base}/")
    assert page.url == f"{base}/example_jobs/"  # redirected under the mount
    assert page.locator('tr[data-queue="default"] td[data-status="completed"]').inner_text() == "3"
    # The app's own indexed field is a filter, by its declaration.
    page.goto(f"{base}/example_jobs/jobs?f_organization=acme")
    assert page.locator("tr.job").count() == 3
    page.goto(f"{base}/example_jobs/jobs?f_organization=globex")
    assert page.locator("tr.job").count() == 0
    page.goto(f"{base}/example_jobs/jobs/{jobs['generate_report']['id']}")
    assert "data warehouse busy" in page.locator(".error-record").first.inner_text()
    page.goto(f"{base}/example_jobs/")
    pause_queue_from_the_dashboard(page, "reports")
    assert any("reports" in doc.get("queues", []) for doc in raw_db.example_jobs_control.find())
    assert raw_db.example_jobs_audit.find_one({"action": "pause"})["who"] == "admin"


def test_the_django_example_serves_the_ui_to_staff_behind_its_login(
    serve, chromium, tmp_path, mongodb_uri, db_name
) -> None:
    env = {
        "EXAMPLE_SQLITE": str(tmp_path / "users.sqlite3"),
        "MONGODB_URI": mongodb_uri,
        "MONGODB_DB": db_name,
        "MONGO_JOB_QUEUE_AUTOSTART": "0",
        "DJANGO_SUPERUSER_USERNAME": "root",
        "DJANGO_SUPERUSER_PASSWORD": "s3cret-Pass",
        "DJANGO_SUPERUSER_EMAIL": "root@example.com",
    }
    for argv in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
        done = manage(*argv, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    server = serve([*RUNSERVER, "--noreload"], cwd=PROJECT, env={k: env[k] for k in ("EXAMPLE_SQLITE",)})
    wait_finished(server, enqueue_examples(server))
    base = f"http://127.0.0.1:{server.port}"
    page = chromium.new_context().new_page()
    page.goto(f"{base}/jobs-admin/")
    assert "/admin/login/" in page.url  # staff_member_required: anonymous users log in first
    page.fill("#id_username", "root")
    page.fill("#id_password", "s3cret-Pass")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/jobs-admin/example_jobs/")
    assert page.locator('tr[data-queue="default"] td[data-status="completed"]').inner_text() == "3"
    assert page.locator(".role").inner_text() == "root · admin"
    pause_queue_from_the_dashboard(page, "reports")
    page.goto(f"{base}/jobs-admin/example_jobs/audit")
    assert "root" in page.locator(".audit-record").first.inner_text()
