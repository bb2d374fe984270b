"""The Django app config of mongo-job-queue."""

from __future__ import annotations

import threading

from django.apps import AppConfig

_ready_lock = threading.Lock()
_ready_done = False


class MongoJobQueueConfig(AppConfig):
    """Loads the handler registry and, only when ``AUTOSTART`` asks, starts the worker.

    ``ready()`` runs its work once per process however often it is called,
    and touches no database: the worker starts from a thread, or at the
    first request.
    """

    name = "mongo_job_queue.contrib.django"
    label = "mongo_job_queue"
    verbose_name = "mongo-job-queue"
    default = True

    def ready(self) -> None:
        global _ready_done
        with _ready_lock:
            if _ready_done:
                return
            from . import _on_ready

            _on_ready()
            _ready_done = True
