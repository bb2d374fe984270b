"""The admin UI in a real browser (headless Chromium): roles, a retry a worker completes, XSS, CSRF, bulk cancel.

The UI is served from this process (Werkzeug on loopback) over the
session's wire server; each browser context asks for its role in an
``X-Role`` header, which the test app's ``authorize`` reads.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from integration.admin_helpers import role_from_header

from mongo_job_queue import FailJob
from mongo_job_queue.contrib.admin import create_admin_app

pytestmark = pytest.mark.integration

#: Where the screenshots go: docs/_static (what docs/admin.rst shows) when MJQ_DOC_SCREENSHOTS=1 asks
#: to refresh them, else a scratch folder, so that a test run leaves the work tree as it was.
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "_static"
    if os.environ.get("MJQ_DOC_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "mjq-admin-screenshots"
)
SHOTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def queue(make_queue):
    queue = make_queue(concurrency=2)
    attempts: dict[str, int] = {}

    def flaky(job):
        # Fails its first run for good (max_retries=0): an operator's retry then completes it.
        attempts[str(job.id)] = attempts.get(str(job.id), 0) + 1
        if attempts[str(job.id)] == 1:
            raise FailJob("the warehouse was down")
        return {"rows": 42}

    queue.register_handler("flaky", flaky)
    queue.register_handler("ok", lambda job: {"ok": True})
    return queue


@pytest.fixture
def admin(queue, local_server):
    return local_server(create_admin_app(queue, authorize=role_from_header, refresh_s=2))


def page_as(chromium, role: str):
    context = chromium.new_context(extra_http_headers={"X-Role": role}, viewport={"width": 1280, "height": 900})
    return context.new_page()


def failed_job(queue, **data):
    job = queue.enqueue("flaky", data, max_retries=0, priority=10)
    assert queue.run_once().status == "failed"
    return job


def test_a_viewer_sees_the_dashboard_and_cannot_retry(chromium, admin, queue, job_model) -> None:
    job = failed_job(queue)
    for n in range(3):
        queue.enqueue("ok", {"n": n})
    queue.drain()
    page = page_as(chromium, "viewer")
    response = page.goto(f"{admin.url}/jobs/")
    assert response.status == 200
    assert page.locator("h1").inner_text().startswith("Dashboard")
    assert page.locator('tr[data-queue="default"] td[data-status="completed"]').inner_text() == "3"
    page.wait_for_selector("#throughput canvas")  # the chart drew (uPlot, bundled)
    page.screenshot(path=str(SHOTS / "admin-dashboard.png"), full_page=True)
    page.goto(f"{admin.url}/jobs/jobs/{job.id}")
    assert page.locator("#job-status").inner_text() == "failed"
    assert page.locator("#action-retry").count() == 0
    # Even a hand-made POST with this browser's own token and cookie is refused for a viewer.
    token = (
        page.locator('input[name="csrf_token"]').first.get_attribute("value")
        if page.locator('input[name="csrf_token"]').count()
        else ""
    )
    refused = page.request.post(
        f"{admin.url}/jobs/jobs/{job.id}/retry",
        form={"csrf_token": token or ""},
        headers={"Origin": admin.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert refused.status == 403
    assert job_model.objects.get(id=job.id).status == "failed"


def test_an_operator_retries_a_failed_job_and_a_running_worker_completes_it(chromium, admin, queue) -> None:
    job = failed_job(queue, report="2026-01")
    queue.start_polling()
    page = page_as(chromium, "operator")
    page.goto(f"{admin.url}/jobs/jobs/{job.id}")
    assert page.locator("#job-status").inner_text() == "failed"
    assert "the warehouse was down" in page.locator(".error-record").first.inner_text()
    page.screenshot(path=str(SHOTS / "admin-job.png"), full_page=True)
    page.click("#action-retry")
    assert "queued again" in page.locator(".notice").inner_text()
    # The live refresh (every 2 s while the tab is visible) shows the worker's outcome.
    # A locator, not wait_for_function: its string predicate is eval'd, which the page's CSP forbids.
    from playwright.sync_api import expect  # the chromium fixture has checked that Playwright is installed

    expect(page.locator("#job-status")).to_have_text("completed", timeout=30_000)
    assert queue.get_job(job.id).result == {"rows": 42}


def test_a_hostile_payload_renders_inert_under_the_csp(chromium, admin, queue) -> None:
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    job = queue.enqueue("ok", {"html": hostile}, delay_ms=600_000)
    page = page_as(chromium, "admin")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    response = page.goto(f"{admin.url}/jobs/jobs/{job.id}")
    csp = response.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    page.goto(f"{admin.url}/jobs/jobs?status=pending")
    page.goto(f"{admin.url}/jobs/jobs/{job.id}")
    page.wait_for_timeout(1500)
    assert dialogs == []
    assert hostile in page.locator("#job-data").inner_text()  # shown as text
    assert page.locator("#job-data img").count() == 0 and page.locator("main script").count() == 0
    assert violations == []  # the page's own scripts all run under the nonce


def test_a_cross_site_form_post_from_another_loopback_origin_is_refused(
    chromium, admin, queue, local_server, job_model
) -> None:
    job = failed_job(queue)
    page = page_as(chromium, "admin")
    page.goto(f"{admin.url}/jobs/jobs/{job.id}")
    # The worst case: the attacker even knows a valid token (it cannot, but the Origin check must hold alone).
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    target = f"{admin.url}/jobs/jobs/{job.id}/retry"

    def attacker(environ, start_response):
        html = (
            f'<form id="f" method="post" action="{target}"><input name="csrf_token" value="{token}"></form>'
            '<script>document.getElementById("f").submit()</script>'
        )
        start_response("200 OK", [("Content-Type", "text/html")])
        return [html.encode()]

    evil = local_server(attacker)
    assert evil.port != admin.port
    with page.expect_response(target) as answer:
        page.goto(evil.url)
    assert answer.value.status == 403
    assert job_model.objects.get(id=job.id).status == "failed"


def test_bulk_cancel_of_a_filter_shows_the_count_asks_and_cancels_exactly_those(
    chromium, admin, queue, job_model
) -> None:
    queue.enqueue_many([{"job_type": "ok", "queue": "bulk", "delay_ms": 600_000, "data": {"n": n}} for n in range(200)])
    others = [queue.enqueue("ok", {}, queue="other", delay_ms=600_000) for _ in range(5)]
    page = page_as(chromium, "admin")
    page.goto(f"{admin.url}/jobs/jobs?queue=bulk&status=pending")
    page.click('button.all[data-action="cancel"]')
    assert page.locator("#confirm-count").inner_text() == "200"
    assert job_model.objects(queue="bulk", status="pending").count() == 200  # asked, nothing done yet
    page.click("#confirm")
    assert re.search(r"200 job\(s\) cancelled", page.locator(".notice").inner_text())
    assert job_model.objects(queue="bulk", status="cancelled").count() == 200
    assert {job_model.objects.get(id=j.id).status for j in others} == {"pending"}
    page.goto(f"{admin.url}/jobs/audit")
    assert "filter: status=pending, queue=bulk" in page.locator(".audit-record").first.inner_text()


def test_the_live_refresh_pauses_while_the_tab_is_hidden(chromium, admin, queue) -> None:
    page = page_as(chromium, "viewer")
    page.goto(f"{admin.url}/jobs/")
    assert page.evaluate("window.mjqRefresh.running()")
    fragments: list[str] = []
    page.on("request", lambda request: fragments.append(request.url) if "fragment=live" in request.url else None)
    page.wait_for_timeout(2500)
    assert fragments  # refreshed every 2 s while visible
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    assert not page.evaluate("window.mjqRefresh.running()")
    seen = len(fragments)
    page.wait_for_timeout(2500)
    assert len(fragments) == seen  # nothing while hidden
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    page.wait_for_timeout(500)
    assert page.evaluate("window.mjqRefresh.running()") and len(fragments) > seen
