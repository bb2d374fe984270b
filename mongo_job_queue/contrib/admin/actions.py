"""The actions (POST only): on one job, on a selection, on every job matching a confirmed filter; pause, fire.

Each checks the role's permission, acts through the queue's public API or
the UI's own guarded writes (:mod:`.data`), writes an audit record, and
redirects (303) to a page computed here, never to a URL from the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bson import ObjectId
from werkzeug.exceptions import NotFound
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from .app import AdminApp, Ctx, QueueHandle
from .filters import MAX_BULK, JobFilter, clamp_int

__all__ = ["ACTIONS_VIEWS", "apply"]

JOB_ACTIONS = ("retry", "cancel", "delete", "run_now")


def _refused(app: AdminApp, ctx: Ctx, action: str) -> Response:
    return app.render(ctx, "error.html", status=403, message=f"Your role ({ctx.role}) may not {action}.")


def apply(handle: QueueHandle, action: str, ids: Sequence[ObjectId]) -> int:
    """Take ``action`` on these jobs; how many it applied to (each guarded by the job's status)."""
    if action == "retry":
        return sum(1 for oid in ids if handle.queue.retry_job(oid))
    if action == "cancel":
        return sum(1 for oid in ids if handle.queue.cancel_job(oid))
    if action == "delete":
        return handle.jobs.delete(ids)
    if action == "run_now":
        return handle.jobs.run_now(ids)
    raise NotFound("No such action.")


def _done(action: str, count: int) -> list[tuple[str, str]]:
    return [("done", action), ("n", str(count))] if count else [("done", "none")]


def job_action(app: AdminApp, ctx: Ctx, job_id: str, action: str) -> Response:
    handle = ctx.handle
    assert handle is not None
    if action not in JOB_ACTIONS or not ObjectId.is_valid(job_id):
        raise NotFound("No such action or job.")
    if not ctx.can(action):
        return _refused(app, ctx, action)
    oid = ObjectId(job_id)
    count = apply(handle, action, [oid])
    handle.audit.record(who=ctx.who, role=ctx.role, action=action, target=f"job {oid}", count=count)
    if action == "delete" and count:
        return redirect(app.url(ctx, "jobs", _done(action, count)), 303)
    return redirect(app.url(ctx, "job", _done(action, count), job_id=str(oid)), 303)


def bulk(app: AdminApp, ctx: Ctx) -> Response:
    """On the checked jobs (``scope=selected``), or on every job matching the filter once its count is confirmed."""
    handle = ctx.handle
    assert handle is not None
    form = ctx.request.form
    everything = form.get("scope") == "filter" or "action_all" in form
    action = form.get("action_all") or form.get("action", "")
    if action not in JOB_ACTIONS:
        raise NotFound("No such action.")
    filt = JobFilter.parse(form, app.filter_fields, handle.queue.store.now())
    back = filt.params()
    if everything:
        if not (ctx.can(action) and ctx.can("bulk_filter")):
            return _refused(app, ctx, f"{action} every job matching a filter")
        count = handle.jobs.count(filt)
        if count > MAX_BULK:
            message = f"The filter matches more than {MAX_BULK} jobs: narrow it (one action takes {MAX_BULK} at most)."
            return app.render(ctx, "error.html", status=400, message=message)
        confirmed = clamp_int(form.get("confirm"), -1, -1, MAX_BULK)
        if confirmed != count:
            return app.render(
                ctx, "confirm.html", action=action, count=count, filt=filt, params=back, changed=confirmed >= 0
            )
        ids = handle.jobs.matching_ids(filt, cap=count)
        target = f"filter: {filt.describe()}"
    else:
        if not ctx.can(action):
            return _refused(app, ctx, action)
        ids = [ObjectId(v) for v in form.getlist("ids")[:MAX_BULK] if ObjectId.is_valid(v)]
        target = f"selection of {len(ids)} job(s)"
    count = apply(handle, action, ids) if ids else 0
    handle.audit.record(who=ctx.who, role=ctx.role, action=action, target=target, count=count)
    return redirect(app.url(ctx, "jobs", back + _done(action, count)), 303)


def pause(app: AdminApp, ctx: Ctx) -> Response:
    handle = ctx.handle
    assert handle is not None
    form = ctx.request.form
    op, kind, name = form.get("op", ""), form.get("kind", ""), form.get("name", "")
    if op not in ("pause", "resume") or kind not in ("queue", "type") or not 0 < len(name) <= 200:
        raise NotFound("No such pause target.")
    if not ctx.can(op):
        return _refused(app, ctx, op)
    names: dict[str, Any] = {"queues": [name]} if kind == "queue" else {"job_types": [name]}
    (handle.queue.pause if op == "pause" else handle.queue.resume)(**names)
    handle.audit.record(who=ctx.who, role=ctx.role, action=op, target=f"{kind} {name}", count=0)
    return redirect(app.url(ctx, "dashboard", [("done", op)]), 303)


def fire(app: AdminApp, ctx: Ctx, name: str) -> Response:
    """Enqueue a schedule's job now, as its next fire would (for a schedule registered in this process)."""
    handle = ctx.handle
    assert handle is not None
    if not ctx.can("fire_schedule"):
        return _refused(app, ctx, "fire a schedule")
    schedule = handle.queue.scheduler.get(name)
    if schedule is None:
        raise NotFound("This schedule is not registered in this process, so its job is not known here.")
    spec = dict(schedule.job)
    job = handle.queue.enqueue(
        schedule.job_type,
        spec.get("data"),
        queue=spec.get("queue", "default"),
        priority=spec.get("priority", 0),
        max_retries=spec.get("max_retries"),
        **dict(schedule.extra_fields),
    )
    handle.audit.record(who=ctx.who, role=ctx.role, action="fire_schedule", target=f"schedule {name}", count=1)
    return redirect(app.url(ctx, "schedules", [("done", "fire"), ("job", str(job.id))]), 303)


ACTIONS_VIEWS: dict[str, Callable[..., Response]] = {
    "job_action": job_action,
    "bulk": bulk,
    "pause": pause,
    "fire": fire,
}
