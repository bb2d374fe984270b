"""The standalone admin server refuses to run open, except on loopback with --insecure-local."""

from __future__ import annotations

import pytest

pytest.importorskip("jinja2")

from mongo_job_queue import ConfigError
from mongo_job_queue.contrib.admin.serve import loopback_only, serve


def test_serve_needs_authorize_or_insecure_local() -> None:
    with pytest.raises(ConfigError, match="authorize"):
        serve(object(), "127.0.0.1", 0)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "example.com", "::"])
def test_insecure_local_is_loopback_only(host: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        serve(object(), host, 0, insecure_local=True)


def test_the_insecure_local_authorize_admits_loopback_clients_only() -> None:
    assert loopback_only({"REMOTE_ADDR": "127.0.0.1"}) == "admin"
    assert loopback_only({"REMOTE_ADDR": "::1"}) == "admin"
    assert loopback_only({"REMOTE_ADDR": "10.0.0.8"}) is None
    assert loopback_only({}) is None
