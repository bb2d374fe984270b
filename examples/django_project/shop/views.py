"""The HTTP endpoints: enqueue a job, show its status."""

from __future__ import annotations

import json

from bson import ObjectId
from bson.errors import InvalidId
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from mongo_job_queue import InvalidJobError
from mongo_job_queue.contrib.django import enqueue as enqueue_job
from mongo_job_queue.contrib.django import get_queue


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@csrf_exempt  # a JSON API for the example; keep CSRF protection on session-authenticated views
@require_POST
def enqueue(request: HttpRequest, organization: str) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "the body must be JSON"}, status=400)
    job_type = body.get("type")
    if job_type not in get_queue().registry:
        return JsonResponse({"error": f"unknown job type {job_type!r}"}, status=400)
    try:
        job = enqueue_job(job_type, body.get("data") or {}, organization=organization)
    except InvalidJobError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    url = reverse("job_status", kwargs={"job_id": str(job.id)})
    return JsonResponse({"id": str(job.id), "status_url": url}, status=202)


@require_GET
def job_status(request: HttpRequest, job_id: str) -> JsonResponse:
    try:
        job = get_queue().get_job(ObjectId(job_id))
    except InvalidId:
        job = None
    if job is None:
        return JsonResponse({"error": "no such job"}, status=404)
    return JsonResponse(
        {
            "id": str(job.id),
            "type": job.type,
            "organization": job.organization,
            "status": job.status,
            "attempts": job.attempts,
            "result": job.result,
            "last_error": job.last_error.message if job.last_error else None,
            "worker_pid": job.lease_owner.pid if job.lease_owner else None,
        }
    )
