"""A Flask app module for ``--app``: the extension, an app factory, a module-level app, and the wrong things.

``--app integration.cli_flask_app:create_app`` (the factory), ``:app`` (an
app), ``:single`` (an extension on one app) resolve to a queue; ``:lonely``
(an extension on no app), ``:twice`` (on two) and ``:bare`` (an app without
the extension) fail with what to pass instead.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from mongo_job_queue.contrib.flask import MongoJobQueue

from . import cli_app  # noqa: F401 - connects the test model's alias, as cli_app does
from .models import IntegrationJob

CONFIG = {"poll_interval_base_ms": 20, "poll_interval_max_ms": 100, "concurrency": 2}

jobs = MongoJobQueue(job_model=IntegrationJob)


@jobs.handler("ok")
def ok(job: IntegrationJob) -> dict[str, Any]:
    return {"app": current_app.name}  # runs in the app's context


def create_app() -> Flask:
    app = Flask("cli_flask_factory")
    app.config["MONGO_JOB_QUEUE_CONFIG"] = CONFIG
    jobs.init_app(app)
    return app


app = create_app()

single = MongoJobQueue(job_model=IntegrationJob)
single_app = Flask("cli_flask_single")
single.init_app(single_app)

lonely = MongoJobQueue(job_model=IntegrationJob)

twice = MongoJobQueue(job_model=IntegrationJob)
twice_apps = [Flask("cli_flask_a"), Flask("cli_flask_b")]
for _app in twice_apps:
    twice.init_app(_app)

bare = Flask("cli_flask_bare")
