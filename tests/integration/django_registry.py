"""A registry module outside any Django app, listed in ``REGISTRY_MODULES``."""

from __future__ import annotations

from mongo_job_queue.contrib.django import register_handler

register_handler("dj_plain_job", lambda job: "from a plain module")
