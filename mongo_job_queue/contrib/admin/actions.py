"""The actions (POST only): on one job, on a selection, on every job matching a confirmed filter; pause, fire.

Each checks the role's permission, acts through the queue's public API or
the UI's own guarded writes (:mod:`.data`), writes an audit record (of a
refusal too, and of a failure with what was done before it), and
redirects (303) to a page computed here, never to a URL from the request.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar

from bson import ObjectId
from werkzeug.exceptions import NotFound
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ...store.faults import short_error
from .app import AdminApp, Ctx, QueueHandle
from .data import ActionFailed
from .filters import MAX_BULK, JobFilter

__all__ = ["ACTIONS_VIEWS", "apply", "selection_digest"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: An action's audited result: how many jobs it changed, and what else to say.
Outcome = tuple[int, Optional[str]]

JOB_ACTIONS = ("retry", "cancel", "delete", "run_now")


def _refused(app: AdminApp, ctx: Ctx, action: str, target: str, what: Optional[str] = None) -> Response:
    message = f"Your role ({ctx.role}) may not {what or action}."
    app.audit_refusal(ctx, action, target, message)
    return app.render(ctx, "error.html", status=403, message=message)


def apply(handle: QueueHandle, action: str, ids: Sequence[ObjectId]) -> int:
    """Take ``action`` on these jobs; how many it applied to (each guarded by the job's status).

    Raises:
        ActionFailed: an error stopped it, with how many it had applied to.
    """
    if action not in JOB_ACTIONS:
        raise NotFound("No such action.")
    done = 0
    try:
        if action == "delete":
            return handle.jobs.delete(ids)
        if action == "run_now":
            return handle.jobs.run_now(ids)
        act = handle.queue.retry_job if action == "retry" else handle.queue.cancel_job
        for oid in ids:
            done += 1 if act(oid) else 0
        return done
    except ActionFailed:
        raise
    except Exception as exc:
        raise ActionFailed(done, exc) from exc


def _audited(ctx: Ctx, action: str, target: str, fn: Callable[[], T], outcome: Callable[[T], Outcome]) -> T:
    """Run ``fn`` and audit it however it ends: ``outcome(result)`` on success, else how far it got and why not.

    A failure's record never hides the failure: if it cannot be written either, that is logged.
    """
    handle = ctx.handle
    assert handle is not None
    try:
        result = fn()
    except Exception as exc:
        count, cause = (exc.count, exc.cause) if isinstance(exc, ActionFailed) else (0, exc)
        done = "an unknown number of" if count is None else str(count)
        try:
            handle.audit.record(
                who=ctx.who, role=ctx.role, action=action, target=target, count=count or 0,
                detail=f"failed after {done} job(s): {short_error(cause)}",
            )  # fmt: skip
        except Exception:
            log.warning("admin: the failure of %s on %s could not be audited", action, target, exc_info=True)
        raise
    count, detail = outcome(result)
    handle.audit.record(who=ctx.who, role=ctx.role, action=action, target=target, count=count, detail=detail)
    return result


def _act(ctx: Ctx, action: str, ids: Sequence[ObjectId], target: str) -> int:
    """:func:`apply`, audited: how many jobs it changed."""
    handle = ctx.handle
    assert handle is not None
    return _audited(ctx, action, target, lambda: apply(handle, action, ids) if ids else 0, lambda n: (n, None))


def _fired(job_id: Optional[ObjectId]) -> Outcome:
    if job_id is None:
        return 0, "not enqueued: the previous run is unfinished (overlap=False), or this fire time has its job"
    return 1, f"job {job_id}"


def _done(action: str, count: int) -> list[tuple[str, str]]:
    return [("done", action), ("n", str(count))] if count else [("done", "none")]


def selection_digest(ids: Sequence[ObjectId]) -> str:
    """Names a set of jobs: what the confirmation of a filter action is bound to."""
    return hashlib.sha256(b"".join(sorted(oid.binary for oid in ids))).hexdigest()[:32]


def job_action(app: AdminApp, ctx: Ctx, job_id: str, action: str) -> Response:
    if action not in JOB_ACTIONS or not ObjectId.is_valid(job_id):
        raise NotFound("No such action or job.")
    oid = ObjectId(job_id)
    if not ctx.can(action):
        return _refused(app, ctx, action, f"job {oid}")
    count = _act(ctx, action, [oid], f"job {oid}")
    if action == "delete" and count:
        return redirect(app.url(ctx, "jobs", _done(action, count)), 303)
    return redirect(app.url(ctx, "job", _done(action, count), job_id=str(oid)), 303)


def bulk(app: AdminApp, ctx: Ctx) -> Response:
    """On the checked jobs (``scope=selected``), or on every job matching the filter once that set is confirmed.

    The confirmation page carries the digest of the ids it counted; the
    confirming POST reads the matching ids again and acts only if they are
    the same set, else it asks again. So jobs that joined the filter in
    between are never acted on unseen, nor does a changed set pass for
    the confirmed one by having the same size.
    """
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
        target = f"filter: {filt.describe()}"
        if not (ctx.can(action) and ctx.can("bulk_filter")):
            return _refused(app, ctx, action, target, f"{action} every job matching a filter")
        ids = handle.jobs.matching_ids(filt, cap=MAX_BULK + 1)
        if len(ids) > MAX_BULK:
            message = f"The filter matches more than {MAX_BULK} jobs: narrow it (one action takes {MAX_BULK} at most)."
            return app.render(ctx, "error.html", status=400, message=message)
        digest, confirmed = selection_digest(ids), form.get("selection")
        if confirmed != digest:
            return app.render(
                ctx, "confirm.html", action=action, count=len(ids), selection=digest, filt=filt, params=back,
                changed=confirmed is not None,
            )  # fmt: skip
    else:
        ids = [ObjectId(v) for v in form.getlist("ids")[:MAX_BULK] if ObjectId.is_valid(v)]
        target = f"selection of {len(ids)} job(s)"
        if not ctx.can(action):
            return _refused(app, ctx, action, target)
    count = _act(ctx, action, ids, target)
    return redirect(app.url(ctx, "jobs", back + _done(action, count)), 303)


def pause(app: AdminApp, ctx: Ctx) -> Response:
    handle = ctx.handle
    assert handle is not None
    form = ctx.request.form
    op, kind, name = form.get("op", ""), form.get("kind", ""), form.get("name", "")
    if op not in ("pause", "resume") or kind not in ("queue", "type") or not 0 < len(name) <= 200:
        raise NotFound("No such pause target.")
    if not ctx.can(op):
        return _refused(app, ctx, op, f"{kind} {name}")
    names: dict[str, Any] = {"queues": [name]} if kind == "queue" else {"job_types": [name]}
    act = handle.queue.pause if op == "pause" else handle.queue.resume
    _audited(ctx, op, f"{kind} {name}", lambda: act(**names), lambda _: (0, None))
    return redirect(app.url(ctx, "dashboard", [("done", op)]), 303)


def fire(app: AdminApp, ctx: Ctx) -> Response:
    """Enqueue a schedule's job now, exactly as a fire of the schedule at this moment would.

    Through the scheduler's own fire (``schedule`` and ``fire_time`` set, and
    for ``overlap=False`` the schedule's ``unique_key``), so the schedules page
    shows it as the last fire and a run still pending or running holds it off.
    Only for a schedule registered in this process, whose job it knows.
    """
    handle = ctx.handle
    assert handle is not None
    name = ctx.request.form.get("name", "")
    if not ctx.can("fire_schedule"):
        return _refused(app, ctx, "fire_schedule", f"schedule {name[:200]}", "fire a schedule")
    scheduler = handle.queue.scheduler
    schedule = scheduler.get(name)
    if schedule is None:
        raise NotFound("This schedule is not registered in this process, so its job is not known here.")
    now = handle.queue.store.now()
    fire_time = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as stored: BSON dates hold milliseconds
    job_id = _audited(
        ctx, "fire_schedule", f"schedule {name}", lambda: scheduler.enqueue_fire(schedule, fire_time), _fired
    )
    if job_id is None:
        return redirect(app.url(ctx, "schedules", [("done", "fire_held")]), 303)
    return redirect(app.url(ctx, "schedules", [("done", "fire"), ("job", str(job_id))]), 303)


ACTIONS_VIEWS: dict[str, Callable[..., Response]] = {
    "job_action": job_action,
    "bulk": bulk,
    "pause": pause,
    "fire": fire,
}
