"""SIGTERM to a development server with a worker: it ends as Ctrl-C does, so the exit handler stops the worker."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from mongo_job_queue.contrib._boot import exit_on_sigterm


@pytest.fixture
def sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_keyboard_interrupt_once_then_kills(sigterm) -> None:
    assert exit_on_sigterm("test") is True
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM kills at once


def test_a_handler_of_the_app_or_server_is_left_alone(sigterm) -> None:
    def own(signum, frame) -> None:
        pass

    signal.signal(signal.SIGTERM, own)
    assert exit_on_sigterm("test") is False
    assert signal.getsignal(signal.SIGTERM) is own


def test_only_the_main_thread_installs_it(sigterm) -> None:
    result = []
    thread = threading.Thread(target=lambda: result.append(exit_on_sigterm("test")))
    thread.start()
    thread.join()
    assert result == [False] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
