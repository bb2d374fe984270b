"""Two endpoints (enqueue a job for an organization, show a job's status), Django's admin, and the jobs admin UI."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.urls import path, re_path
from shop import views

from mongo_job_queue.contrib.admin import create_admin_app
from mongo_job_queue.contrib.admin.django import admin_view, staff_role
from mongo_job_queue.contrib.django import get_queue

# Superusers are admins of the jobs UI, other staff operators; anyone else goes to the login page.
jobs_admin = create_admin_app(get_queue(), authorize=staff_role, filter_fields=["organization"])

urlpatterns = [
    path("health", views.health),
    path("organizations/<str:organization>/jobs", views.enqueue, name="enqueue"),
    path("jobs/<str:job_id>", views.job_status, name="job_status"),
    path("admin/", admin.site.urls),
    re_path(r"^jobs-admin/(?P<path>.*)$", staff_member_required(admin_view(jobs_admin))),
]
