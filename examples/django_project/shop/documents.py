"""The project's job model: the queue's fields plus the organization that owns the job."""

from __future__ import annotations

from mongoengine import StringField

from mongo_job_queue import BaseJob


class Job(BaseJob):
    organization = StringField(required=True, max_length=100)
    meta = {"collection": "example_jobs", "indexes": ["organization"]}
