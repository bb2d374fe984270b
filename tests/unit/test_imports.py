"""The library never imports a web framework unless the app imports its integration."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys
import mongo_job_queue, mongo_job_queue.cli, mongo_job_queue.testing, mongo_job_queue.contrib
web = ("flask", "django", "click", "werkzeug", "jinja2", "itsdangerous")
frameworks = sorted(m for m in sys.modules if m.split(".")[0] in web)
print(",".join(frameworks))
"""


def test_import_mongo_job_queue_imports_no_framework() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_python_m_mongo_job_queue_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mongo_job_queue", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    for command in ("worker", "stats", "enqueue", "retry", "cancel", "purge", "demo", "exit codes"):
        assert command in out.stdout


EXTRA_CODE = """
import sys
import mongo_job_queue, mongo_job_queue.cli, mongo_job_queue.contrib
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "prometheus_client"))
assert not leaked, leaked
sys.modules[{package!r}] = None
try:
    import mongo_job_queue.contrib.{module}
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("imported without {package}")
"""


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [
        ("prometheus", "prometheus_client", "prometheus"),
        ("otel", "opentelemetry", "otel"),
        ("admin", "jinja2", "admin"),
        ("admin", "werkzeug", "admin"),
    ],
)
def test_an_integration_without_its_extra_says_which_to_install(module: str, package: str, extra: str) -> None:
    code = EXTRA_CODE.format(module=module, package=package)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'mongo-job-queue[{extra}]'" in proc.stdout
