"""The app of the many-hosts run: ``--app bench.hosts_app:make_queue``, one no-op job type.

Each worker process in a namespace runs the real command line on it,
connected from ``MJQ_HOSTS_URI`` and ``MJQ_HOSTS_DB``; the config is the
library's defaults except the poll ceiling of ``MJQ_HOSTS_POLL_MAX_MS``
(10 s by default, so an idle worker settles within half a minute).
"""

from __future__ import annotations

import os

import mongoengine

from mongo_job_queue import BaseJob, PersistentJobQueue, create_job_queue

ALIAS = "mjq_hosts"


class HostsJob(BaseJob):
    meta = {"collection": "bench_hosts_jobs", "db_alias": ALIAS}


def make_queue() -> PersistentJobQueue[HostsJob]:
    mongoengine.connect(
        host=os.environ["MJQ_HOSTS_URI"], db=os.environ["MJQ_HOSTS_DB"], alias=ALIAS, uuidRepresentation="standard"
    )
    queue = create_job_queue(
        job_model=HostsJob, config={"poll_interval_max_ms": int(os.environ.get("MJQ_HOSTS_POLL_MAX_MS", "10000"))}
    )
    queue.register_handler("noop", lambda job: None)
    return queue
