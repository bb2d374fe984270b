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
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "prometheus_client", "redis"))
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
        ("redis", "redis", "redis"),
    ],
)
def test_an_integration_without_its_extra_says_which_to_install(module: str, package: str, extra: str) -> None:
    code = EXTRA_CODE.format(module=module, package=package)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"the {extra!r} extra: python -m pip install '.[{extra}]' in a checkout of mongo-job-queue" in proc.stdout


def test_moved_names_keep_their_old_path_with_a_deprecation_warning() -> None:
    import mongo_job_queue
    from mongo_job_queue import embedded, errors
    from mongo_job_queue.dev import embedded as dev_embedded

    assert "EmbeddedServerError" not in mongo_job_queue.__all__
    with pytest.warns(DeprecationWarning, match=r"mongo_job_queue\.dev\.embedded"):
        from mongo_job_queue import EmbeddedServerError
    assert EmbeddedServerError is errors.EmbeddedServerError
    with pytest.warns(DeprecationWarning, match=r"mongo_job_queue\.embedded\.EmbeddedMongo is deprecated"):
        assert embedded.EmbeddedMongo is dev_embedded.EmbeddedMongo
    with pytest.raises(AttributeError):
        _ = mongo_job_queue.NoSuchName  # type: ignore[attr-defined]


def test_the_library_never_imports_a_deprecated_path_itself() -> None:
    # An error when attributed to one of the library's modules: the warning of an old path it imports.
    code = (
        "import warnings\n"
        "warnings.filterwarnings('error', category=DeprecationWarning, module=r'mongo_job_queue(\\.|$)')\n"
        "import mongo_job_queue, mongo_job_queue.cli, mongo_job_queue.testing, mongo_job_queue.dev.demo\n"
        "import mongo_job_queue.contrib.prometheus, mongo_job_queue.contrib.otel, mongo_job_queue.contrib.flask\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
