"""An app module whose database cannot be reached: nothing listens on port 1."""

from __future__ import annotations

import mongoengine
from mongoengine import StringField

from mongo_job_queue import BaseJob, create_job_queue

mongoengine.register_connection("mjq_down", host="mongodb://127.0.0.1:1/down", uuidRepresentation="standard")


class DownJob(BaseJob):
    note = StringField()
    meta = {"collection": "jobs", "db_alias": "mjq_down"}


queue = create_job_queue(job_model=DownJob)
queue.register_handler("ok", lambda job: None)
