"""The docs say what the code does: the configuration reference is QueueConfig's own, README's commands are CI's."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest
from conftest import OrgJob

from mongo_job_queue import QueueConfig, create_job_queue

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def config_reference() -> ModuleType:
    """docs/_ext/config_reference.py, the Sphinx extension that renders the table (its table part needs no Sphinx)."""
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "_ext" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_field_is_described_once_in_field_order_with_its_default() -> None:
    rows = config_reference().rows(QueueConfig)
    fields = dataclasses.fields(QueueConfig)
    assert [name for name, _, _ in rows] == [f.name for f in fields]
    for (name, default, meaning), f in zip(rows, fields, strict=True):
        assert default.startswith(f"``{f.default!r}``"), (name, default)
        assert len(meaning) > 20, (name, meaning)


def test_derived_defaults_are_marked_and_units_are_exact() -> None:
    shown = {name: default for name, default, _ in config_reference().rows(QueueConfig)}
    assert shown["lease_ms"] == "``60000`` (1 min), derived"
    assert shown["heartbeat_interval_ms"] == "``15000`` (15 s), derived"
    assert shown["retention_completed_ms"] == "``604800000`` (7 d)"
    assert shown["max_result_bytes"] == "``1048576`` (1 MiB)"
    assert shown["db_timeout_ms"] == "``0``"
    assert shown["worker_id"] == "``None``"
    assert shown["sync_clock"] == "``True``"


def test_a_description_continued_over_lines_is_one_entry() -> None:
    meaning = dict((name, text) for name, _, text in config_reference().rows(QueueConfig))["db_timeout_ms"]
    assert "maxTimeMS" in meaning and meaning.endswith("Must be shorter than ``lease_ms``.")
    assert "\n" not in meaning and "  " not in meaning


@dataclasses.dataclass
class _Undescribed:
    """A config with a field its docstring forgot.

    Attributes:
        one: Described.
    """

    one: int = 1
    two: int = 2


@dataclasses.dataclass
class _Overdescribed:
    """A config whose docstring describes a field it no longer has.

    Attributes:
        one: Described.
        gone: Removed from the fields, not from here.
    """

    one: Optional[int] = None


@pytest.mark.parametrize(("cls", "name"), [(_Undescribed, "two"), (_Overdescribed, "gone")])
def test_a_docstring_out_of_step_with_the_fields_fails_the_docs_build(cls: type, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        config_reference().rows(cls)


def test_the_configuration_page_renders_the_generated_table_and_no_page_copies_it() -> None:
    assert ".. queue-config-table::" in (DOCS / "configuration.rst").read_text()
    assert "config_reference" in (DOCS / "conf.py").read_text()
    # A hand-written row of the table (``* - ``lease_ms``) anywhere else would be a second copy to drift.
    for page in [ROOT / "README.rst", *DOCS.glob("*.rst")]:
        assert not re.search(r"^\s*\* - ``lease_ms``", page.read_text(), flags=re.M), page


def test_the_readme_quick_start_is_the_command_ci_runs() -> None:
    """.ci/run runs README's Quick start test command as written; both must keep saying the same thing."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    readme = (ROOT / "README.rst").read_text()
    quick_start = readme[readme.index("Quick start\n") : readme.index("Installation\n")]
    commands = [line.strip() for line in quick_start.splitlines() if line.startswith("    ")]
    assert commands == ["python -m pip install tox && tox -e demo", "python -m pip install tox && tox"]
    assert ci[-1] == commands[1]


#: Where users read how to install: the docs, README, the examples and the messages of the integrations and tools.
INSTALL_TEXTS = [
    ROOT / "README.rst",
    *DOCS.glob("*.rst"),
    *(ROOT / "examples").rglob("*.py"),
    *(p for part in ("cli", "contrib", "dev") for p in (ROOT / "mongo_job_queue" / part).rglob("*.py")),
]


def declared_extras() -> set[str]:
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return set(setup["options.extras_require"])


def test_install_instructions_agree_the_package_is_installed_from_a_checkout() -> None:
    """It is not on the package index: no page may say ``pip install mongo-job-queue``."""
    from_index = re.compile(r"pip install\s+[\"']?mongo-job-queue\b")
    assert [str(p) for p in INSTALL_TEXTS if from_index.search(p.read_text())] == []
    readme = (ROOT / "README.rst").read_text()
    assert 'python -m pip install ".[flask]"' in readme and "not on the package index" in readme


def test_every_extra_an_install_line_names_exists() -> None:
    extras = declared_extras()
    named = set()
    for page in INSTALL_TEXTS:
        for group in re.findall(r"pip install [\"']?(?:\.|/path/to/mongo-job-queue)\[([a-z,]+)\]", page.read_text()):
            named.update(group.split(","))
    assert named and named <= extras, named - extras


#: ``# pkg/module.py`` at the head of a code block names the file the lines below it belong to.
_FILE_HEADER = re.compile(r"^\s*# (?:\w+/)*(\w+)\.py\s*$")


def test_no_example_module_defines_its_own_name() -> None:
    """``myapp/jobs.py`` defining ``jobs``, imported in ``__init__``, would hide the submodule (the docs warn)."""
    trapped = []
    for page in [ROOT / "README.rst", *DOCS.glob("*.rst")]:
        module = None
        for line in page.read_text().splitlines():
            header = _FILE_HEADER.match(line)
            if header:
                module = header.group(1)
            elif module and re.match(rf"^\s*{module}\s*=", line):
                trapped.append(f"{page.name}: {module}.py defines {module}")
    assert trapped == []


def marked_example(page: str, name: str) -> str:
    """The literal block between ``.. begin-NAME`` and ``.. end-NAME`` of ``docs/PAGE``, dedented."""
    import textwrap

    text = (DOCS / page).read_text()
    block = text[text.index(f".. begin-{name}") : text.index(f".. end-{name}")]
    return textwrap.dedent(block[block.index("\n::\n") + len("\n::\n") :])


def signup_example() -> str:
    """The literal block between ``.. begin-signup-example`` and ``.. end-signup-example`` of job-control.rst."""
    return marked_example("job-control.rst", "signup-example")


def test_the_signup_example_sends_one_welcome_email_also_after_the_first_completed(queue, clock) -> None:
    sent = []
    queue.register_handler("send_welcome", lambda job: sent.append(job.data["to"]))
    namespace = {"queue": queue}
    exec(compile(signup_example(), "job-control.rst signup example", "exec"), namespace)
    first = namespace["signup"]("ada@example.com")
    assert queue.drain() == 1
    clock.advance(seconds=7 * 86_400)  # a week later, the form is sent again
    again = namespace["signup"]("ada@example.com")
    assert again.id == first.id and again.status == "completed"
    assert queue.drain() == 0 and sent == ["ada@example.com"]


def test_the_fake_clock_example_runs_as_written_on_mongomock() -> None:
    """testing.rst's fake clock on the mongomock setup the page recommends, retention (its TTL indexes) left on.

    mongomock expires a TTL index's documents by the real clock and ignores its partial filter: a fake clock
    at a fixed past date saw its completed job deleted before the example's last assert.
    """
    code = marked_example("testing.rst", "fake-clock-example")
    namespace: dict[str, object] = {"create_job_queue": create_job_queue, "Job": OrgJob}
    exec(compile(code, "testing.rst fake clock example", "exec"), namespace)  # its asserts are the test
    queue = namespace["queue"]
    assert queue.config.retention_completed_ms is not None  # type: ignore[attr-defined]
    ttl = {name for name, spec in OrgJob._get_collection().index_information().items() if "expireAfterSeconds" in spec}
    assert ttl >= {"mjq_ttl_completed", "mjq_ttl_failed"}, ttl  # the indexes mongomock applies were built


def test_a_unique_key_alone_protects_only_unfinished_jobs(queue) -> None:
    """What the docs say the signup example needs ``unique_for_ms`` for."""
    queue.register_handler("send_welcome", lambda job: None)
    first = queue.enqueue("send_welcome", {}, unique_key="welcome:ada@example.com")
    assert queue.enqueue("send_welcome", {}, unique_key="welcome:ada@example.com").id == first.id  # pending
    assert queue.drain() == 1
    assert queue.enqueue("send_welcome", {}, unique_key="welcome:ada@example.com").id != first.id  # finished


def test_a_periodic_job_s_type_is_the_schedule_s_name(queue, clock) -> None:
    """scheduling.rst's first example, as written: the jobs of @periodic("cleanup") are of type "cleanup"."""
    import textwrap

    pytest.importorskip("cronsim")
    text = (DOCS / "scheduling.rst").read_text()
    lines = text[text.index("process that runs a worker::\n") :].splitlines()[1:]
    end = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("    "))
    block = textwrap.dedent("\n".join(lines[:end]))
    queue.register_handler("build_report", lambda job: None)
    queue.register_handler("sync", lambda job: None)
    exec(compile(block, "scheduling.rst example", "exec"), {"queue": queue})
    assert "cleanup" in queue.registry and "remove_old_uploads" not in queue.registry
    clock.now = clock.now.replace(minute=1)
    queue.fire_schedules(clock.now)  # first sight: no job
    fired = queue.fire_schedules(clock.now.replace(minute=15))
    assert {f.schedule for f in fired if f.enqueued} >= {"cleanup"}
    assert {job.type for job in queue.job_model.objects(schedule="cleanup")} == {"cleanup"}
