"""Job types nobody handles, over the wire: judged by the running workers' registry, and said by the CLI."""

from __future__ import annotations

import io
import logging

import pytest
from helpers import wait_until

from mongo_job_queue import InvalidJobError, cli
from mongo_job_queue.store.workers import WorkerDocs

pytestmark = pytest.mark.integration

APP = "integration.cli_app:make_queue"


def _warned(caplog: pytest.LogCaptureFixture, job_type: str) -> bool:
    return any(r.levelno == logging.WARNING and f"{job_type!r}" in r.getMessage() for r in caplog.records)


def test_a_web_process_judges_types_by_the_workers_it_can_see(make_queue, caplog) -> None:
    worker = make_queue()
    worker.register_handler("remote_report", lambda job: None)
    worker.start_polling()
    web = make_queue()  # no handler of its own, as a web process
    strict = make_queue(strict_types=True)
    wait_until(lambda: any("remote_report" in w.job_types for w in WorkerDocs(web.store).list()), timeout=20)
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        web.enqueue("remote_report", {})
        web.enqueue("remote_reprot", {})
    assert not _warned(caplog, "remote_report") and _warned(caplog, "remote_reprot")
    strict.enqueue("remote_report", {})
    with pytest.raises(InvalidJobError, match="strict_types"):
        strict.enqueue("remote_reprt", {})
    assert sum(web.counts().values()) == 3  # the refused one was not written


def test_the_cli_warns_about_an_unknown_type_and_still_enqueues_it(job_model) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["enqueue", "no_such_type", "--app", APP], out=out, err=err) == 0
    assert job_model.objects.get(id=out.getvalue().strip()).type == "no_such_type"
    assert "warning: no handler for job type 'no_such_type'" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["enqueue", "ok", "--app", APP], out=out, err=err) == 0
    assert "warning" not in err.getvalue()
