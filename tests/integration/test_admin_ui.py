"""The admin web UI over the wire server: every page and action, the permission matrix, CSRF, Origin, bounds."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import mongoengine
import pytest
from bson import ObjectId
from helpers import wait_until
from pymongo import monitoring

from integration.admin_helpers import AdminClient, forms_on, role_from_header
from integration.models import ALIAS, APP_NAME
from mongo_job_queue import BaseJob, ConfigError, FailJob, create_job_queue
from mongo_job_queue.clock import to_naive_utc
from mongo_job_queue.contrib.admin import ACTIONS, ROLES, allowed, create_admin_app
from mongo_job_queue.contrib.admin.filters import MAX_BULK

pytestmark = pytest.mark.integration


class ListenedJob(BaseJob):
    """A job model on a connection of its own, whose commands a test listens to."""

    meta = {"collection": "listened", "db_alias": "admin_listened"}


class CountedJob(BaseJob):
    """A job model with an indexed field of its own that is not a string."""

    n = mongoengine.IntField()
    meta = {"collection": "counted", "db_alias": ALIAS, "indexes": ["n"]}


PAGES = ["/jobs/", "/jobs/jobs", "/jobs/schedules", "/jobs/audit", "/jobs/?fragment=live", "/static/admin.js"]


@pytest.fixture
def queue(make_queue):
    queue = make_queue()
    queue.register_handler("ok", lambda job: {"echo": job.data.get("n")})

    def boom(job):
        raise FailJob("no luck")

    queue.register_handler("boom", boom)
    return queue


@pytest.fixture
def app(queue):
    return create_admin_app(
        queue, authorize=role_from_header, identify=lambda environ: f"user-{environ['HTTP_X_ROLE']}"
    )


def failed_job(queue, **fields):
    job = queue.enqueue("boom", {}, max_retries=0, priority=100, **fields)
    assert queue.run_once().status == "failed"
    return job


def ids_on(page_html: str) -> list[str]:
    return re.findall(r'name="ids" value="([0-9a-f]{24})"', page_html)


def hidden(page_html: str, name: str) -> str:
    """The value of a form's hidden field, as the browser would post it."""
    return re.search(rf'type="hidden" name="{name}" value="([^"]*)"', page_html).group(1)


# -- access ----------------------------------------------------------------


def test_the_app_refuses_to_start_without_authorize(queue) -> None:
    with pytest.raises(ConfigError, match="authorize"):
        create_admin_app(queue)
    with pytest.raises(ConfigError, match="authorize"):
        create_admin_app(queue, authorize=None)


def test_a_filter_field_needs_an_index(queue) -> None:
    with pytest.raises(ConfigError, match="first key of an index"):
        create_admin_app(queue, authorize=role_from_header, filter_fields=["organization"])
    with pytest.raises(ConfigError, match="not a field"):
        create_admin_app(queue, authorize=role_from_header, filter_fields=["nope"])
    with pytest.raises(ConfigError, match="'queue' is a field of the queue"):
        create_admin_app(queue, authorize=role_from_header, filter_fields=["queue"])


@pytest.mark.parametrize("role", [None, "", "root", "Admin"])
def test_no_known_role_no_page(app, role) -> None:
    client = AdminClient(app, role)
    for path in ["/", *PAGES]:
        response = client.get(path)
        assert response.status_code == 403, path
        assert "csrf_token" not in response.get_data(as_text=True)
        assert "Content-Security-Policy" in response.headers


def test_authorize_raising_is_a_refusal(queue) -> None:
    def broken(environ):
        raise RuntimeError("auth backend down")

    assert AdminClient(create_admin_app(queue, authorize=broken), "admin").get("/jobs/").status_code == 403


def test_every_page_renders_for_a_viewer_with_the_security_headers(app, queue) -> None:
    job = failed_job(queue)
    client = AdminClient(app, "viewer")
    for path in [*PAGES, f"/jobs/jobs/{job.id}", f"/jobs/jobs/{job.id}?fragment=live"]:
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:500])
        csp = response.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert re.search(r"script-src 'nonce-[\w-]{16,}'", csp) and "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"  # no-referrer would make Chromium send Origin: null
    response = client.get("/jobs/")
    page = response.get_data(as_text=True)
    nonce = re.search(r"'nonce-([\w-]+)'", response.headers["Content-Security-Policy"]).group(1)
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts and all(f'nonce="{nonce}"' in attrs and "src=" in attrs for attrs in scripts)
    assert "http://" not in page.split("<body")[0] and "https://" not in page.split("<body")[0]  # nothing from a CDN


def test_the_csrf_cookie_is_httponly_and_samesite_strict(app) -> None:
    response = AdminClient(app, "viewer").get("/jobs/")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "mjq_admin_csrf=" in cookie


def test_the_permission_matrix_is_cumulative() -> None:
    assert set(ROLES) == {"viewer", "operator", "admin"}
    for action in ACTIONS:
        assert allowed("admin", action)
    assert [a for a in ACTIONS if allowed("viewer", a)] == ["view"]
    assert {a for a in ACTIONS if allowed("operator", a)} == {"view", "retry", "cancel", "run_now", "fire_schedule"}
    assert not any(allowed(role, "retry") for role in (None, "", "superuser"))


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_each_role_may_take_only_its_actions_on_a_job(app, queue, role, job_model) -> None:
    client = AdminClient(app, role)
    for action in ("retry", "cancel", "run_now", "delete"):
        job = failed_job(queue) if action == "retry" else queue.enqueue("ok", {}, delay_ms=600_000)
        client.get(f"/jobs/jobs/{job.id}")
        before = job_model.objects.get(id=job.id).to_mongo().to_dict()
        response = client.post(f"/jobs/jobs/{job.id}/{action}")
        if allowed(role, action):
            assert response.status_code == 303, (role, action)
        else:
            assert response.status_code == 403, (role, action)
            assert job_model.objects.get(id=job.id).to_mongo().to_dict() == before
    pause = client.post("/jobs/pause", {"op": "pause", "kind": "queue", "name": "default"})
    assert pause.status_code == (303 if role == "admin" else 403)
    assert queue.paused()["queues"] == (["default"] if role == "admin" else [])


def test_the_action_buttons_shown_follow_the_role(app, queue) -> None:
    job = failed_job(queue)
    viewer = AdminClient(app, "viewer").get(f"/jobs/jobs/{job.id}").get_data(as_text=True)
    operator = AdminClient(app, "operator").get(f"/jobs/jobs/{job.id}").get_data(as_text=True)
    assert 'id="action-retry"' not in viewer and 'id="action-retry"' in operator
    assert 'id="action-delete"' not in operator
    assert "every job matching" not in AdminClient(app, "operator").get("/jobs/jobs").get_data(as_text=True).lower()


# -- CSRF and Origin ---------------------------------------------------------


def test_a_post_needs_the_token_bound_to_its_cookie(app, queue, job_model) -> None:
    job = failed_job(queue)
    client = AdminClient(app, "admin")
    client.get("/jobs/")
    assert client.post(f"/jobs/jobs/{job.id}/retry", token=None).status_code == 403
    assert client.post(f"/jobs/jobs/{job.id}/retry", token="forged.token.value").status_code == 403
    other = AdminClient(app, "admin")
    other.get("/jobs/")
    # Another browser's valid token is worthless with this browser's cookie.
    assert client.post(f"/jobs/jobs/{job.id}/retry", token=other.token).status_code == 403
    # A token signed by another app (another secret) is refused too.
    stranger = AdminClient(create_admin_app(queue, authorize=role_from_header), "admin")
    stranger.get("/jobs/")
    assert client.post(f"/jobs/jobs/{job.id}/retry", token=stranger.token).status_code == 403
    assert job_model.objects.get(id=job.id).status == "failed"
    assert client.post(f"/jobs/jobs/{job.id}/retry").status_code == 303
    assert job_model.objects.get(id=job.id).status == "pending"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:8081"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "null"},
    ],
)
def test_a_cross_origin_post_is_refused_even_with_a_valid_token(app, queue, job_model, headers) -> None:
    job = failed_job(queue)
    client = AdminClient(app, "admin")
    client.get("/jobs/")
    response = client.post(f"/jobs/jobs/{job.id}/retry", headers=headers)
    assert response.status_code == 403 and "Refused" in response.get_data(as_text=True)
    assert job_model.objects.get(id=job.id).status == "failed"


def test_no_state_change_through_get(app, queue, job_model) -> None:
    job = failed_job(queue)
    client = AdminClient(app, "admin")
    for path in (f"/jobs/jobs/{job.id}/retry", "/jobs/bulk", "/jobs/pause", "/jobs/schedules/fire"):
        assert client.get(path).status_code == 405, path
    assert client.get(f"/jobs/jobs/{job.id}?action=retry&status=pending").status_code == 200
    assert job_model.objects.get(id=job.id).status == "failed"


# -- pages -------------------------------------------------------------------


def test_the_dashboard_shows_counts_oldest_age_throughput_workers_and_pauses(app, queue) -> None:
    for n in range(3):
        queue.enqueue("ok", {"n": n})
    queue.enqueue("ok", {}, queue="mail")
    queue.drain(max_jobs=2)
    failed_job(queue)
    queue.pause(job_types=["boom"])
    queue.start_polling()
    client = AdminClient(app, "viewer")
    page = wait_until(
        lambda: (html := client.get("/jobs/").get_data(as_text=True)) and 'class="worker live"' in html and html
    )
    default = re.search(r'<tr data-queue="default">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r'data-status="completed"><a [^>]*>(\d+)<', default).group(1) in ("2", "3")
    assert re.search(r'data-status="failed"><a [^>]*>(\d+)<', default).group(1) == "1"
    assert 'data-queue="mail"' in page
    series = json.loads(re.search(r"id=\"throughput\" class=\"chart\" data-series='([^']+)'", page).group(1))
    assert len(series["t"]) == 60 and sum(series["completed"]) >= 2 and sum(series["failed"]) == 1
    assert "job types: boom" in page
    assert f'data-worker="{queue.worker.owner.worker_id}"' in page


def test_throughput_buckets_finished_jobs_per_minute(app, queue) -> None:
    for n in range(4):
        queue.enqueue("ok", {"n": n})
    queue.drain()
    failed_job(queue)
    series = app.handles["jobs"].jobs.throughput(60)
    assert len(series["t"]) == 60 and sum(series["completed"]) == 4 and sum(series["failed"]) == 1
    assert series["completed"][-1] + series["completed"][-2] == 4  # this minute (or the one before)
    assert len(app.handles["jobs"].jobs.throughput(180)["t"]) == 180


def test_the_job_list_filters_on_allow_listed_fields_only(queue, job_model) -> None:
    job_model._meta["index_specs"].append({"fields": [("organization", 1)]})
    try:
        app = create_admin_app(queue, authorize=role_from_header, filter_fields=["organization"])
        a = queue.enqueue("ok", {}, organization="acme")
        b = queue.enqueue("ok", {}, organization="globex", queue="mail")
        c = queue.enqueue("ok", {}, unique_key="only-me")
        d = failed_job(queue)
        client = AdminClient(app, "viewer")

        def shown(query: str) -> set[str]:
            response = client.get(f"/jobs/jobs?{query}")
            assert response.status_code == 200, response.get_data(as_text=True)
            return set(ids_on(response.get_data(as_text=True)))

        assert shown("") == {str(j.id) for j in (a, b, c, d)}
        assert shown("f_organization=acme") == {str(a.id)}
        assert shown("queue=mail") == {str(b.id)}
        assert shown("unique_key=only-me") == {str(c.id)}
        assert shown("status=failed") == {str(d.id)}
        assert shown("status=pending&status=failed") == {str(j.id) for j in (a, b, c, d)}
        assert shown("error_type=mongo_job_queue.errors.FailJob") == {str(d.id)}
        assert shown("type=boom") == {str(d.id)}
        # No operator, no field name from the request: these are plain values or ignored keys.
        assert shown("queue[$ne]=x") == shown("")
        assert shown("status=$where") == shown("")
        assert shown("queue=%7B%22%24ne%22%3A1%7D") == set()
        assert shown("data.secret=1&f_data=1") == shown("")
        assert client.get("/jobs/jobs?queue=" + "x" * 201).status_code == 400
        assert client.get("/jobs/jobs?created_from=yesterday").status_code == 400
    finally:
        job_model._meta["index_specs"].pop()


def test_a_filter_field_that_is_no_string_compares_the_value_its_field_stores(job_model) -> None:
    """As the CLI's ``--field n=5``: the text is converted by the field, so an IntField matches 5, not "5"."""
    CountedJob.drop_collection()
    try:
        queue = create_job_queue(job_model=CountedJob)
        five, six = queue.enqueue("ok", {}, n=5), queue.enqueue("ok", {}, n=6)
        client = AdminClient(create_admin_app(queue, authorize=role_from_header, filter_fields=["n"]), "viewer")
        response = client.get("/counted/jobs?f_n=5")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert ids_on(response.get_data(as_text=True)) == [str(five.id)]
        assert ids_on(client.get("/counted/jobs?f_n=6").get_data(as_text=True)) == [str(six.id)]
        assert 'name="f_n" value="5"' in response.get_data(as_text=True)  # the form shows the text as given
        refused = client.get("/counted/jobs?f_n=five")
        assert refused.status_code == 400
        assert "&#39;five&#39; is not a value of &#39;n&#39;" in refused.get_data(as_text=True)
    finally:
        CountedJob.drop_collection()


def test_the_time_range_filters_on_creation_and_is_clamped(app, queue) -> None:
    job = queue.enqueue("ok", {})
    client = AdminClient(app, "viewer")
    created = job.created_at.replace(second=0, microsecond=0)
    start, end = (created - timedelta(minutes=1)).isoformat(), (created + timedelta(minutes=2)).isoformat()
    inside = f"created_from={start}&created_to={end}"
    assert ids_on(client.get(f"/jobs/jobs?{inside}").get_data(as_text=True)) == [str(job.id)]
    before = f"created_to={(created - timedelta(minutes=1)).isoformat()}"
    assert ids_on(client.get(f"/jobs/jobs?{before}").get_data(as_text=True)) == []
    # A range wider than 90 days is cut to its last 90 days; the form shows the clamped bound.
    wide = client.get("/jobs/jobs?created_from=1990-01-01T00:00&created_to=2020-06-01T00:00").get_data(as_text=True)
    assert 'value="2020-03-03T00:00"' in wide


def test_pagination_walks_the_list_on_the_index_and_page_size_is_clamped(app, queue) -> None:
    made = [str(queue.enqueue("ok", {"n": n}).id) for n in range(7)]
    newest_first = list(reversed(made))
    client = AdminClient(app, "viewer")
    first = client.get("/jobs/jobs?limit=3").get_data(as_text=True)
    assert ids_on(first) == newest_first[:3]
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(older.removeprefix("")).get_data(as_text=True)
    assert ids_on(second) == newest_first[3:6]
    newer = re.search(r'rel="prev" href="([^"]+)"', second).group(1).replace("&amp;", "&")
    assert ids_on(client.get(newer).get_data(as_text=True)) == newest_first[:3]
    assert len(ids_on(client.get("/jobs/jobs?limit=0").get_data(as_text=True))) == 1
    assert 'value="200"' in client.get("/jobs/jobs?limit=999999999999999").get_data(as_text=True)
    assert len(ids_on(client.get("/jobs/jobs?limit=abc").get_data(as_text=True))) == 7


def test_chart_window_and_refresh_interval_are_clamped(queue) -> None:
    app = create_admin_app(queue, authorize=role_from_header, refresh_s=0)
    client = AdminClient(app, "viewer")
    page = client.get("/jobs/?minutes=100000").get_data(as_text=True)
    assert "last 180 min" in page and 'data-refresh-s="2"' in page
    assert "last 5 min" in client.get("/jobs/?minutes=-3").get_data(as_text=True)
    assert 'data-refresh-s="300"' in AdminClient(
        create_admin_app(queue, authorize=role_from_header, refresh_s=10**6), "viewer"
    ).get("/jobs/").get_data(as_text=True)


def test_the_job_page_shows_escaped_payloads_errors_lease_and_redacts(queue) -> None:
    def redact(doc):
        doc["data"] = {**doc["data"], "password": "***"}
        return doc

    app = create_admin_app(queue, authorize=role_from_header, redact=redact)
    job = queue.enqueue(
        "boom", {"html": "<script>alert(1)</script><img src=x onerror=alert(2)>", "password": "hunter2"}
    )
    queue.run_once()
    page = AdminClient(app, "viewer").get(f"/jobs/jobs/{job.id}").get_data(as_text=True)
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "hunter2" not in page and "***" in page
    assert "mongo_job_queue.errors.FailJob: no luck" in page and "Traceback" in page
    assert "attempt 1" in page and "Run at" in page


def test_an_unknown_job_is_404_and_a_bad_id_too(app) -> None:
    client = AdminClient(app, "viewer")
    assert client.get("/jobs/jobs/0123456789ab0123456789ab").status_code == 404
    assert client.get("/jobs/jobs/not-an-id").status_code == 404
    assert client.get("/nope/").status_code == 404
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/app.py").status_code == 404


# -- actions -----------------------------------------------------------------


def test_single_job_actions_follow_the_job_state(app, queue, job_model) -> None:
    client = AdminClient(app, "admin")
    failed = failed_job(queue)
    client.post(f"/jobs/jobs/{failed.id}/retry")
    assert job_model.objects.get(id=failed.id).status == "pending"
    later = queue.enqueue("ok", {}, delay_ms=600_000)
    assert client.post(f"/jobs/jobs/{later.id}/run_now").status_code == 303
    assert to_naive_utc(job_model.objects.get(id=later.id).run_at) <= queue.store.now()
    assert queue.run_once() is not None
    pending = queue.enqueue("ok", {}, delay_ms=600_000)
    client.post(f"/jobs/jobs/{pending.id}/cancel")
    assert job_model.objects.get(id=pending.id).status == "cancelled"
    response = client.post(f"/jobs/jobs/{pending.id}/delete")
    assert response.status_code == 303 and response.headers["Location"].endswith("done=delete&n=1")
    assert job_model.objects(id=pending.id).count() == 0


def test_a_running_job_is_cancel_requested_never_deleted_or_made_due(app, queue, job_model) -> None:
    job = queue.enqueue("ok", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None
    client = AdminClient(app, "admin")
    before = job_model.objects.get(id=job.id)
    response = client.post(f"/jobs/jobs/{job.id}/delete")
    assert response.headers["Location"].endswith("done=none")
    client.post(f"/jobs/jobs/{job.id}/run_now")
    after = job_model.objects.get(id=job.id)
    assert after.status == "processing" and after.run_at == before.run_at and after.lease_token == claimed.token
    client.post(f"/jobs/jobs/{job.id}/cancel")
    assert job_model.objects.get(id=job.id).cancel_requested is True


def test_bulk_actions_on_a_selection(app, queue, job_model) -> None:
    failed = [failed_job(queue) for _ in range(3)]
    keep = failed_job(queue)
    client = AdminClient(app, "operator")
    client.get("/jobs/jobs")
    form = [("action", "retry"), *(("ids", str(j.id)) for j in failed), ("ids", "not-an-id")]
    response = client.post("/jobs/bulk", form)
    assert response.status_code == 303 and "done=retry&n=3" in response.headers["Location"]
    assert {job_model.objects.get(id=j.id).status for j in failed} == {"pending"}
    assert job_model.objects.get(id=keep.id).status == "failed"
    assert client.post("/jobs/bulk", [("action", "delete"), ("ids", str(keep.id))]).status_code == 403


def test_bulk_on_a_filter_asks_to_confirm_the_count_then_acts_on_exactly_those(app, queue, job_model) -> None:
    mail = [queue.enqueue("ok", {"n": n}, queue="mail", delay_ms=600_000) for n in range(5)]
    other = queue.enqueue("ok", {}, delay_ms=600_000)
    client = AdminClient(app, "admin")
    client.get("/jobs/jobs?queue=mail")
    asked = client.post("/jobs/bulk", [("action_all", "cancel"), ("queue", "mail"), ("status", "pending")])
    page = asked.get_data(as_text=True)
    assert asked.status_code == 200 and re.search(r'id="confirm-count">5<', page)
    assert {job_model.objects.get(id=j.id).status for j in mail} == {"pending"}  # nothing yet
    # The set changed meanwhile: confirm again.
    mail.append(queue.enqueue("ok", {}, queue="mail", delay_ms=600_000))
    form = [("scope", "filter"), ("action", "cancel"), ("queue", "mail"), ("status", "pending")]
    again = client.post("/jobs/bulk", [*form, ("selection", hidden(page, "selection"))])
    assert again.status_code == 200 and "changed" in again.get_data(as_text=True)
    assert re.search(r'id="confirm-count">6<', again.get_data(as_text=True))
    done = client.post("/jobs/bulk", [*form, ("selection", hidden(again.get_data(as_text=True), "selection"))])
    assert done.status_code == 303 and "done=cancel&n=6" in done.headers["Location"]
    assert {job_model.objects.get(id=j.id).status for j in mail} == {"cancelled"}
    assert job_model.objects.get(id=other.id).status == "pending"
    # An operator may act on a selection, not on everything matching a filter.
    operator = AdminClient(app, "operator")
    operator.get("/jobs/jobs")
    assert operator.post("/jobs/bulk", [("action_all", "cancel")]).status_code == 403


def test_a_bulk_action_is_bounded(app, queue, job_model, make_queue) -> None:
    # Stored by a producer with a longer bound per call: 1,001 inserts at once outlast the default
    # 1.5 s on the loaded test server, and the bulk action's bound, not the insert, is under test.
    make_queue(db_timeout_ms=15_000, lease_ms=60_000, heartbeat_interval_ms=10_000).enqueue_many(
        [{"job_type": "ok", "queue": "big", "delay_ms": 600_000}] * (MAX_BULK + 1)
    )
    client = AdminClient(app, "admin")
    client.get("/jobs/")
    response = client.post("/jobs/bulk", [("action_all", "delete"), ("queue", "big")])
    assert response.status_code == 400 and f"more than {MAX_BULK}" in response.get_data(as_text=True)
    assert job_model.objects(queue="big").count() == MAX_BULK + 1


def test_pause_and_resume_queues_and_types(app, queue) -> None:
    client = AdminClient(app, "admin")
    client.get("/jobs/")
    client.post("/jobs/pause", {"op": "pause", "kind": "queue", "name": "mail"})
    client.post("/jobs/pause", {"op": "pause", "kind": "type", "name": "boom"})
    assert queue.paused() == {"queues": ["mail"], "job_types": ["boom"]}
    assert "job types: boom" in client.get("/jobs/").get_data(as_text=True)
    client.post("/jobs/pause", {"op": "resume", "kind": "queue", "name": "mail"})
    assert queue.paused() == {"queues": [], "job_types": ["boom"]}
    assert client.post("/jobs/pause", {"op": "drop", "kind": "queue", "name": "mail"}).status_code == 404


def test_schedules_show_next_and_last_fire_and_fire_now(app, queue, job_model) -> None:
    queue.schedule("tick", job_type="ok", data={"n": 1}, every_ms=3_600_000)
    queue.fire_schedules()
    client = AdminClient(app, "operator")
    page = client.get("/jobs/schedules").get_data(as_text=True)
    assert 'data-schedule="tick"' in page and "every 3600000 ms" in page and "Fire now" in page
    before = job_model.objects(type="ok").count()
    response = client.post("/jobs/schedules/fire", {"name": "tick"})
    assert response.status_code == 303 and "done=fire" in response.headers["Location"]
    assert job_model.objects(type="ok").count() == before + 1
    assert client.post("/jobs/schedules/fire", {"name": "unknown"}).status_code == 404
    assert "Fire now" not in AdminClient(app, "viewer").get("/jobs/schedules").get_data(as_text=True)


def test_every_action_is_audited_and_shown(app, queue, raw_db) -> None:
    job = failed_job(queue)
    client = AdminClient(app, "operator")
    client.get("/jobs/")
    assert client.post(f"/jobs/jobs/{job.id}/retry").status_code == 303
    assert client.post(f"/jobs/jobs/{job.id}/delete").status_code == 403  # refused: nothing done, the attempt audited
    records = list(raw_db["jobs_audit"].find().sort("_id", 1))
    assert [(r["who"], r["role"], r["action"], r["target"], r["count"]) for r in records] == [
        ("user-operator", "operator", "retry", f"job {job.id}", 1),
        ("user-operator", "operator", "delete", f"job {job.id}", 0),
    ]
    assert "detail" not in records[0] and records[1]["detail"] == "refused: Your role (operator) may not delete."
    page = AdminClient(app, "viewer").get("/jobs/audit").get_data(as_text=True)
    assert "user-operator" in page and f"job {job.id}" in page


def test_several_queues_are_listed(queue, make_queue) -> None:
    app = create_admin_app({"main": queue, "other": make_queue()}, authorize=role_from_header)
    client = AdminClient(app, "viewer")
    assert "/main/" in client.get("/").get_data(as_text=True)
    assert client.get("/other/jobs").status_code == 200


# -- confirmations, audits and counts that hold under concurrent change and failure ---------------------------


def test_a_filter_confirmation_is_bound_to_the_set_of_jobs_not_to_its_size(app, queue, job_model) -> None:
    seen = [queue.enqueue("ok", {"n": n}, queue="mail", delay_ms=600_000) for n in range(5)]
    client = AdminClient(app, "admin")
    client.get("/jobs/jobs?queue=mail&status=pending")
    asked = client.post("/jobs/bulk", [("action_all", "delete"), ("queue", "mail"), ("status", "pending")])
    assert re.search(r'id="confirm-count">5<', asked.get_data(as_text=True))
    [(action, fields)] = [f for f in forms_on(asked.get_data(as_text=True)) if f[0].endswith("/bulk")]
    # Meanwhile one confirmed job leaves the filter and an unseen one joins it: the same count, another set.
    queue.cancel_job(seen[0].id)
    intruder = queue.enqueue("ok", {"important": "payroll"}, queue="mail", delay_ms=600_000)
    again = client.post(action, fields)  # the browser's click on "Yes"
    assert again.status_code == 200 and "changed" in again.get_data(as_text=True)
    assert job_model.objects(id=intruder.id).count() == 1 and job_model.objects(queue="mail").count() == 6
    assert not [r for r in app.handles["jobs"].audit.page(10) if r["action"] == "delete"]
    # Confirming the set now shown acts on exactly that set.
    [(action, fields)] = [f for f in forms_on(again.get_data(as_text=True)) if f[0].endswith("/bulk")]
    done = client.post(action, fields)
    assert done.status_code == 303 and "done=delete&n=5" in done.headers["Location"]
    assert [j.id for j in job_model.objects(queue="mail")] == [seen[0].id]  # cancelled: not in the filter


def test_a_retried_delete_counts_only_the_jobs_it_deleted(app, queue, job_model, failpoint) -> None:
    real = failed_job(queue)
    client = AdminClient(app, "admin")
    client.get("/jobs/jobs")
    ids = [str(real.id), str(ObjectId()), str(ObjectId())]  # two ids of no job (never existed, or long deleted)
    failpoint(["delete"], 1, errorCode=50, errmsg="injected time limit")  # a transient error: the delete is retried
    response = client.post("/jobs/bulk", [("action", "delete"), *(("ids", i) for i in ids)])
    assert response.status_code == 303 and "done=delete&n=1" in response.headers["Location"]
    assert job_model.objects(id=real.id).count() == 0
    [record] = app.handles["jobs"].audit.page(5)
    assert (record["action"], record["count"]) == ("delete", 1)


def test_an_action_failing_part_way_is_audited_with_what_it_did(app, queue, job_model, raw_db) -> None:
    jobs = [failed_job(queue) for _ in range(5)]
    client = AdminClient(app, "operator")
    client.get("/jobs/jobs")
    raw_db.client.admin.command(  # the third retry's update fails for good (not a transient error)
        "configureFailPoint",
        "failCommand",
        mode={"skip": 2},
        data={"failCommands": ["update"], "errorCode": 121, "errmsg": "injected", "appName": APP_NAME},
    )
    try:
        response = client.post("/jobs/bulk", [("action", "retry"), *(("ids", str(j.id)) for j in jobs)])
    finally:
        raw_db.client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert response.status_code == 500 and "part-way" in response.get_data(as_text=True)
    assert "Content-Security-Policy" in response.headers
    assert sum(job_model.objects.get(id=j.id).status == "pending" for j in jobs) == 2
    [record] = app.handles["jobs"].audit.page(5)
    assert (record["action"], record["target"], record["count"]) == ("retry", "selection of 5 job(s)", 2)
    assert record["detail"].startswith("failed after 2 job(s):")


def test_refused_state_changes_of_known_users_are_audited(app, queue, raw_db) -> None:
    job = failed_job(queue)
    viewer = AdminClient(app, "viewer")
    viewer.get("/jobs/")
    assert viewer.post(f"/jobs/jobs/{job.id}/retry").status_code == 403
    assert viewer.post(f"/jobs/jobs/{job.id}/retry", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    nobody = AdminClient(app, None)  # no role at all: refused, and not audited
    assert nobody.post(f"/jobs/jobs/{job.id}/retry", token="x").status_code == 403
    records = list(raw_db["jobs_audit"].find().sort("_id", 1))
    assert [(r["who"], r["action"], r["count"], r["detail"]) for r in records] == [
        ("user-viewer", "retry", 0, "refused: Your role (viewer) may not retry."),
        ("user-viewer", "retry", 0, "refused: cross-site request (Sec-Fetch-Site: cross-site)"),
    ]
    assert records[1]["target"] == f"POST /jobs/jobs/{job.id}/retry"
    assert viewer.post("/jobs/schedules/fire", {"name": "nightly"}).status_code == 403
    assert raw_db["jobs_audit"].find_one({"action": "fire_schedule"})["detail"] == (
        "refused: Your role (viewer) may not fire a schedule."
    )
    assert "refused: cross-site request" in viewer.get("/jobs/audit").get_data(as_text=True)


def test_fire_now_fires_as_the_schedule_does_and_keeps_overlap_false(app, queue, job_model) -> None:
    schedule = queue.schedule("nightly", job_type="ok", every_ms=3_600_000, overlap=False)
    queue.scheduler.enqueue_fire(schedule, to_naive_utc(schedule.latest_fire(queue.store.now())))  # its own fire
    running = queue.worker.claim_one()  # its job now runs
    assert running is not None and running.doc.get("unique_key") == schedule.overlap_key
    client = AdminClient(app, "operator")
    [(action, fields)] = forms_on(client.get("/jobs/schedules").get_data(as_text=True))  # the "Fire now" button
    held = client.post(action, fields)
    assert held.status_code == 303 and "done=fire_held" in held.headers["Location"]
    assert job_model.objects(type="ok").count() == 1 and queue.worker.claim_one() is None  # no overlapping run
    assert "Not fired" in client.get(held.headers["Location"]).get_data(as_text=True)
    job_model.objects(id=running.doc["_id"]).update(set__status="completed")
    fired = client.post(action, fields)
    assert fired.status_code == 303 and "done=fire&job=" in fired.headers["Location"]
    job = job_model.objects.get(status="pending")
    assert (job.schedule, job.unique_key) == ("nightly", schedule.overlap_key) and job.fire_time is not None
    [info] = queue.schedules()
    assert (info.last_job_id, info.last_status, info.last_fire) == (job.id, "pending", to_naive_utc(job.fire_time))
    records = app.handles["jobs"].audit.page(5)
    assert [(r["action"], r["count"]) for r in records] == [("fire_schedule", 1), ("fire_schedule", 0)]


@pytest.mark.parametrize("name", ["a/b", "..", "x?y", "x#y", "sp ace", "pct%2F"])
def test_fire_now_works_for_any_schedule_name(app, queue, job_model, name) -> None:
    queue.schedule(name, job_type="ok", every_ms=3_600_000)
    client = AdminClient(app, "operator")
    [(action, fields)] = forms_on(client.get("/jobs/schedules").get_data(as_text=True))
    assert client.post(action, fields).status_code == 303
    assert job_model.objects(schedule=name).count() == 1


# -- malformed parameters, time bounds ---------------------------------------------------------------------------


def test_malformed_parameters_are_never_a_server_error(app, queue) -> None:
    queue.enqueue("ok", {})
    viewer = AdminClient(app, "viewer")
    for path in [
        "/jobs/jobs?limit=%C2%B2",  # '²': str.isdigit() says yes, int() says no
        "/jobs/?minutes=%C2%B9",
        "/jobs/audit?limit=%E2%91%A0",
        "/jobs/jobs?n=%C2%B2&done=retry",
        "/jobs/jobs?created_from=0001-01-01T00:00%2B01:00",  # before datetime.min in UTC
        "/jobs/jobs?created_to=9999-12-31T23:59-01:00",  # after datetime.max in UTC
    ]:
        assert viewer.get(path).status_code == 200, path
    admin = AdminClient(app, "admin")
    asked = admin.post("/jobs/bulk", [("scope", "filter"), ("action", "cancel"), ("confirm", "\u00b2")])
    assert asked.status_code == 200 and 'id="confirm-count">1<' in asked.get_data(as_text=True)


def test_a_page_read_that_times_out_is_tried_once_and_answered_503(app, queue, failpoint) -> None:
    queue.enqueue("ok", {})
    client = AdminClient(app, "viewer")
    assert client.get("/jobs/").status_code == 200
    # One failure each: a retried read would succeed on its second try and hide it.
    pages = [("aggregate", "/jobs/"), ("find", "/jobs/"), ("find", "/jobs/schedules"), ("find", "/jobs/jobs")]
    for command, path in pages:
        failpoint([command], 1, errorCode=50, errmsg="operation exceeded time limit")
        response = client.get(path)
        assert response.status_code == 503, (command, path)
        assert "took longer than 1500 ms" in response.get_data(as_text=True)
        assert client.get(path).status_code == 200


def test_every_page_query_carries_the_queue_db_timeout_as_max_time_ms(mongodb_uri, db_name, failpoint) -> None:
    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.sent: list[tuple[str, Any]] = []

        def started(self, event: Any) -> None:
            self.sent.append((event.command_name, event.command.get("maxTimeMS")))

        def succeeded(self, event: Any) -> None: ...
        def failed(self, event: Any) -> None: ...

    commands = Commands()
    mongoengine.connect(
        db=db_name,
        host=mongodb_uri,
        alias="admin_listened",
        appname=APP_NAME,
        uuidRepresentation="standard",
        event_listeners=[commands],
    )
    try:
        ListenedJob.drop_collection()
        queue = create_job_queue(job_model=ListenedJob, config={"lease_ms": 3_000, "heartbeat_interval_ms": 500})
        queue.enqueue("ok", {})
        client = AdminClient(create_admin_app(queue, authorize=role_from_header), "viewer", home="/listened/jobs")
        assert client.get("/listened/").status_code == 200 and client.get("/listened/jobs").status_code == 200
        bounds = [ms for name, ms in commands.sent if name in ("aggregate", "find")]
        bound = queue.config.db_timeout_s * 1000
        assert bound == 1500 and bounds and all(bound - 100 < ms <= bound for ms in bounds), bounds
        # The dashboard's counts running out of time: sent once, not once per retry.
        commands.sent.clear()
        failpoint(["aggregate"], 100, errorCode=50, errmsg="operation exceeded time limit")
        assert client.get("/listened/").status_code == 503
        assert [name for name, _ in commands.sent].count("aggregate") == 1
    finally:
        ListenedJob.drop_collection()
        mongoengine.disconnect(alias="admin_listened")


def test_the_ui_indexes_are_built_under_the_index_build_bound(app, queue, failpoint, caplog) -> None:
    queue.enqueue("ok", {})  # the model's own indexes exist, the UI's not yet (a fresh collection)
    # Each build takes longer than one call's bound (db_timeout_ms, 1.5 s), as on a large collection.
    failpoint(["createIndexes"], 5, blockConnection=True, blockTimeMS=2_000)
    response = AdminClient(app, "viewer").get("/jobs/jobs")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "transient database error" not in caplog.text  # built once, not timed out and retried
