"""The pages (GET only, no state change): dashboard, job list, job detail, schedules, audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Optional

from bson import ObjectId
from werkzeug.exceptions import NotFound
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ...status import ALL_STATUSES
from .app import AdminApp, Ctx
from .filters import DEFAULT_PAGE, MAX_PAGE, JobFilter, clamp_int

__all__ = ["VIEWS"]

#: The throughput chart's window, in minutes (the ``minutes`` parameter is clamped to it).
CHART_MINUTES, MAX_CHART_MINUTES = 60, 180
#: Fixed texts for the notice after an action (never text from the URL).
NOTICES = {
    "retry": "{n} job(s) queued again.",
    "cancel": "{n} job(s) cancelled or their cancellation requested.",
    "delete": "{n} job(s) deleted.",
    "run_now": "{n} job(s) made due now.",
    "pause": "Paused.",
    "resume": "Resumed.",
    "fire": "Schedule fired: job enqueued.",
    "fire_held": "Not fired: the schedule's previous job is unfinished (overlap=False), or this fire time has its job.",
    "none": "Nothing was done: no job in a state this action applies to.",
}


def _object_id(value: Optional[str]) -> Optional[ObjectId]:
    return ObjectId(value) if value and ObjectId.is_valid(value) else None


def notice(ctx: Ctx) -> Optional[str]:
    args = ctx.request.args
    text = NOTICES.get(args.get("done", ""))
    return text.format(n=clamp_int(args.get("n"), 0, 0, 10**9)) if text else None


def pretty(value: Any) -> str:
    """A payload as indented JSON text (escaped by the template), BSON types as strings."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def index(app: AdminApp, ctx: Ctx) -> Response:
    first = next(iter(app.handles))
    if len(app.handles) == 1:
        return redirect(app.url(ctx, "dashboard", q=first), 303)
    return app.render(ctx, "index.html")


def static(app: AdminApp, ctx: Ctx, name: str) -> Response:
    return app.static(name)


def dashboard(app: AdminApp, ctx: Ctx) -> Response:
    handle = ctx.handle
    assert handle is not None
    minutes = clamp_int(ctx.request.args.get("minutes"), CHART_MINUTES, 5, MAX_CHART_MINUTES)
    reads = handle.reads  # each read tried once: a slow one answers 503 at once, never after retries
    context = {
        **reads.stats(),
        "statuses": ALL_STATUSES,
        "workers": reads.once(handle.workers.list, "Listing the workers"),
        "throughput": handle.jobs.throughput(minutes),
        "minutes": minutes,
        "now": handle.queue.store.now(),
        "notice": notice(ctx),
    }
    template = "_dashboard_live.html" if ctx.request.args.get("fragment") == "live" else "dashboard.html"
    return app.render(ctx, template, **context)


def jobs(app: AdminApp, ctx: Ctx) -> Response:
    handle = ctx.handle
    assert handle is not None
    args = ctx.request.args
    filt = JobFilter.parse(args, app.filter_fields, handle.queue.store.now())
    limit = clamp_int(args.get("limit"), DEFAULT_PAGE, 1, MAX_PAGE)
    page = handle.jobs.page(filt, limit, before=_object_id(args.get("before")), after=_object_id(args.get("after")))
    return app.render(
        ctx,
        "jobs.html",
        filt=filt,
        params=filt.params(),
        limit=limit,
        page=page,
        statuses=ALL_STATUSES,
        filter_fields=app.filter_fields,
        notice=notice(ctx),
    )


def job(app: AdminApp, ctx: Ctx, job_id: str) -> Response:
    handle = ctx.handle
    assert handle is not None
    oid = _object_id(job_id)
    reads = handle.reads
    doc = reads.once(lambda: reads.store.admin.get(oid), "Reading the job") if oid is not None else None
    if doc is None:
        raise NotFound("No such job (it may have been deleted or removed by retention).")
    shown = app.redact(dict(doc)) if app.redact is not None else doc
    template = "_job_live.html" if ctx.request.args.get("fragment") == "live" else "job.html"
    return app.render(
        ctx,
        template,
        job=shown,
        job_id=str(oid),
        data=pretty(shown.get("data")),
        result=pretty(shown.get("result")) if "result" in shown else None,
        headers=pretty(shown.get("headers")) if shown.get("headers") else None,
        errors=list(reversed(shown.get("errors") or [])),
        now=handle.queue.store.now(),
        notice=notice(ctx),
    )


def schedules(app: AdminApp, ctx: Ctx) -> Response:
    handle = ctx.handle
    assert handle is not None
    schedules = handle.reads.schedules(handle.queue.scheduler)
    return app.render(ctx, "schedules.html", schedules=schedules, notice=notice(ctx))


def audit(app: AdminApp, ctx: Ctx) -> Response:
    handle = ctx.handle
    assert handle is not None
    limit = clamp_int(ctx.request.args.get("limit"), DEFAULT_PAGE, 1, MAX_PAGE)
    records = handle.audit.page(limit + 1, before=_object_id(ctx.request.args.get("before")))
    older = records[limit - 1]["_id"] if len(records) > limit else None
    return app.render(ctx, "audit.html", records=records[:limit], older=older)


def age(now: datetime, then: Optional[datetime]) -> str:
    """``then`` relative to ``now``, in words: ``3 s ago``, ``in 2 min``."""
    if not isinstance(then, datetime):
        return ""
    seconds = (now - then).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{seconds / size:.0f} {unit}"
            break
    else:
        amount = f"{seconds:.0f} s"
    return f"in {amount}" if ahead else f"{amount} ago"


VIEWS: dict[str, Callable[..., Response]] = {
    "index": index,
    "static": static,
    "dashboard": dashboard,
    "jobs": jobs,
    "job": job,
    "schedules": schedules,
    "audit": audit,
}
