"""The admin UI browser tests' fixtures: Debian's headless Chromium driven by Playwright, or a skip saying why.

Nothing here downloads a browser: ``.ci/browser.sh`` installs ``chromium``
with apt-get (tox runs it first), and Playwright is pointed at it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

CHROMIUM = os.environ.get("MJQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the admin UI browser tests need Playwright's Python package: pip install playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"no chromium at {CHROMIUM}: run .ci/browser.sh (apt-get install chromium) to run the browser tests"
        )
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


class LocalServer:
    """A WSGI app served on 127.0.0.1 from a thread of the test process."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def local_server() -> Iterator[Any]:
    servers: list[LocalServer] = []

    def start(app: Any) -> LocalServer:
        servers.append(LocalServer(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
