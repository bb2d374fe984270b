"""The job model the integration tests inject, as an app would define it."""

from __future__ import annotations

from mongoengine import DynamicField, StringField

from mongo_job_queue import BaseJob

ALIAS = "mjq_integration"
#: The queue's connection announces this name, so failpoints can target it alone.
APP_NAME = "mjq-integration"


class IntegrationJob(BaseJob):
    organization = StringField()
    #: Any stored value (operator-like documents, regexes, arrays): a chunk key's odd partitions.
    partition = DynamicField()
    meta = {"collection": "jobs", "db_alias": ALIAS}


#: A second connection, made with ``tz_aware=True`` as many apps make it.
TZ_ALIAS = "mjq_tz_aware"


class TzAwareJob(BaseJob):
    meta = {"collection": "tz_jobs", "db_alias": TZ_ALIAS}
