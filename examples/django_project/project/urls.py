"""Two endpoints: enqueue a job for an organization, show a job's status."""

from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("health", views.health),
    path("organizations/<str:organization>/jobs", views.enqueue, name="enqueue"),
    path("jobs/<str:job_id>", views.job_status, name="job_status"),
]
