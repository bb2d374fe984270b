"""URLs of the in-process Django tests: a route that touches no database."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("health", health)]
