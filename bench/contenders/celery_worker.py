"""The Celery app of the Celery contender, imported by its worker subprocess.

``celery -A bench.contenders.celery_worker worker ...`` loads this module.
The broker is kombu's MongoDB transport on the bench's server and database
(``BENCH_BROKER_URL``); no result backend. Every task is a no-op that counts
itself in its batch; the last one of a batch prints one JSON line with the
wall-clock time and the cumulative database commands of this process
(counted by a pymongo listener registered globally, before any client
exists), which the bench reads from the worker's stdout.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from pymongo import monitoring

from bench.metrics import CommandCounter

COMMANDS = CommandCounter()
monitoring.register(COMMANDS)

app = Celery("mjq_bench", broker=os.environ.get("BENCH_BROKER_URL", "mongodb://127.0.0.1:27017/mjq_bench"))
app.conf.update(
    task_ignore_result=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "mjq_bench"),
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,  # the bench reads this process's stdout
    broker_connection_retry_on_startup=True,
)

_lock = threading.Lock()
_done: Counter[str] = Counter()


@app.task(name="bench.noop")
def noop(batch: str, size: int) -> None:
    with _lock:
        _done[batch] += 1
        last = _done[batch] == size
    if last:
        print(json.dumps({"batch": batch, "t": time.time(), "commands": COMMANDS.snapshot()}), flush=True)


@worker_ready.connect
def _ready(**_: Any) -> None:
    print(json.dumps({"ready": True, "commands": COMMANDS.snapshot()}), flush=True)
