"""The suite's own hang bounds (tests/conftest.py ``_HangWatch``): a hung run ends and says where.

A run whose server stopped answering ends its session early (the check
before each test calls ``pytest.exit``); the session's fixtures are then torn
down outside any test's bound, and a teardown that waits on that server (the
test database's drop) held a CI run until CI's own limit. Each case runs a
small suite in one pytest-xdist worker of a child process, with short bounds, and
must end with the stacks printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HUNG_TEARDOWN = """
import threading
import pytest

@pytest.fixture(scope="session")
def stuck():
    yield 1
    threading.Event().wait()  # a teardown that waits on a server gone for good

def test_uses_stuck(stuck):
    assert stuck == 1

def test_ends_the_session_early():
    pytest.exit("the server stopped answering")
"""


def run_suite(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir()
    # The watch's hooks, as the real suite has them: tests/conftest.py loaded as a plugin, under a name
    # of its own (this suite's conftest is "conftest" too), with tests/ importable as for the real suite.
    (suite / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import importlib.util, sys
            sys.path.insert(0, {str(ROOT / "tests")!r})
            spec = importlib.util.spec_from_file_location("mjq_suite_conftest", {str(ROOT / "tests" / "conftest.py")!r})
            module = importlib.util.module_from_spec(spec)
            sys.modules["mjq_suite_conftest"] = module
            spec.loader.exec_module(module)
            pytest_plugins = ["mjq_suite_conftest"]
            """
        )
    )
    (suite / "test_hang.py").write_text(textwrap.dedent(source))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MJQ_TEST_HARD_LIMIT_S": "60",  # far off: the session-teardown bound is the one to fire
        "MJQ_TEST_TEARDOWN_LIMIT_S": "5",
    }
    command = [sys.executable, "-m", "pytest", "-n", "1", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite)]
    return subprocess.run(
        [*command, str(suite)],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # without the teardown bound the run never ends: this fails the test instead
    )


def test_a_session_ended_early_with_a_hung_teardown_ends_and_prints_where(tmp_path: Path) -> None:
    try:
        done = run_suite(tmp_path, HUNG_TEARDOWN)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the run did not end within 120 s: {exc.stdout!r}")
    assert done.returncode != 0, done.stdout
    assert "the session's teardown ran past 5 s" in done.stdout, done.stdout + done.stderr
    assert "Thread 0x" in done.stdout  # every thread's stack, in the run's own summary
