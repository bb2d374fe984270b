"""README.rst's complete example runs as written, over the wire, and does what its comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import MongoClient

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.rst"


def readme_example() -> str:
    """The literal block between ``.. begin-example`` and ``.. end-example``, dedented."""
    text = README.read_text()
    block = text[text.index(".. begin-example") : text.index(".. end-example")]
    body = block[block.index("\n::\n") + len("\n::\n") :]
    return textwrap.dedent(body).strip() + "\n"


def with_database(uri: str, name: str) -> str:
    """``uri`` naming database ``name``: the example connects to the URI's database when it names one."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def test_the_readme_example_is_a_complete_program() -> None:
    code = readme_example()
    compile(code, "README.rst example", "exec")
    for step in ("class Job(BaseJob)", "create_job_queue(", "@queue.handler(", "queue.enqueue(", "start_polling()"):
        assert step in code, step
    assert 20 <= len(code.strip().splitlines()) <= 40


def test_the_readme_example_runs_its_job_to_completion(mongodb_uri: str, tmp_path: Path) -> None:
    db = f"mjq_readme_{uuid.uuid4().hex[:10]}"
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "MONGODB_URI": with_database(mongodb_uri, db)}
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert "welcome, ada@example.com of acme" in lines, proc.stdout
        said = re.search(r"^print\(done\.status, done\.result\)\s+# (.+)$", script.read_text(), flags=re.M)
        assert said is not None and lines[-1] == said.group(1), proc.stdout  # the output its comment shows
        with MongoClient(mongodb_uri) as client:
            [job] = client[db]["jobs"].find()
        assert (job["type"], job["status"], job["attempts"]) == ("send_welcome", "completed", 1)
        assert (job["result"], job["organization"]) == ({"sent": True}, "acme")
        assert "completed" in proc.stderr  # the example's logging shows the job's life
    finally:
        with MongoClient(mongodb_uri) as client:
            client.drop_database(db)
