"""Fixtures shared by every test folder that talks to a real MongoDB wire server.

By default one embedded SecantusDB server is started for the whole session.
Set ``MONGODB_URI`` to run the same tests against a real mongod or replica
set; nothing else changes. Each session uses its own database, dropped at the
end, and each test starts from an empty jobs collection.

They live here, at the top of ``tests/``, so that ``tests/integration`` and
``tests/reliability`` share one session server: importing fixtures into a
folder's own conftest would register them twice and start two.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mongoengine
import pytest
from integration.models import ALIAS, APP_NAME, IntegrationJob
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mongo_job_queue import PersistentJobQueue, create_job_queue
from mongo_job_queue.dev.embedded import EmbeddedMongo

#: ``--tz-aware`` (or ``MJQ_TZ_AWARE=1``): the queue's connection is made with
#: ``tz_aware=True``, as many apps make it; tox runs the integration suite a
#: second time so.
TZ_AWARE_ENV = "MJQ_TZ_AWARE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tz-aware",
        action="store_true",
        default=False,
        help=f"connect the queue's test connection with tz_aware=True (also: {TZ_AWARE_ENV}=1)",
    )


def tz_aware(config: pytest.Config) -> bool:
    return bool(config.getoption("--tz-aware")) or os.environ.get(TZ_AWARE_ENV, "") not in ("", "0")


def pytest_report_header(config: pytest.Config) -> str | None:
    return "queue connection: tz_aware=True" if tz_aware(config) else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tz_neutral(reason): the --tz-aware rerun skips this test, which cannot see a tz_aware connection "
        "(say why; see tests/README.rst)",
    )
    config.addinivalue_line(
        "markers",
        "serial: asserts a time bound or races real processes, so it needs the machine to itself: tox runs "
        "it alone (pytest -m serial), the rest in parallel (pytest -n 3 -m 'not serial'); see tests/README.rst",
    )


#: The fixture that makes the queue's test connection (``job_model``, ``make_queue``, ``raw_db``... need it).
QUEUE_CONNECTION = "db_name"


def tz_rerun_skip_reason(item: pytest.Item) -> str | None:
    """Why the ``--tz-aware`` rerun skips ``item``, or None: it reruns (see tests/README.rst)."""
    fixtures = getattr(item, "fixturenames", ())
    if "spawn" in fixtures:
        return "runs the worker in a child process, whose connection is not tz_aware"
    if QUEUE_CONNECTION not in fixtures:
        return "tz_neutral: never uses the queue's test connection (no db_name fixture)"
    marker = item.get_closest_marker("tz_neutral")
    if marker is not None:
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: tz_neutral needs a reason")
        return f"tz_neutral: {reason}"
    return None


@pytest.hookimpl(tryfirst=True)  # before -m selects on it
def pytest_itemcollected(item: pytest.Item) -> None:
    # A test on the wire server is an integration test, marked or not: "-m 'not integration'" leaves it out,
    # and the --tz-aware rerun (-m integration) takes it.
    if "mongodb_uri" in getattr(item, "fixturenames", ()) and item.get_closest_marker("integration") is None:
        item.add_marker(pytest.mark.integration)


@pytest.hookimpl(trylast=True)  # after tests/integration/conftest.py has marked its tz_neutral tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not tz_aware(config):
        return
    for item in items:
        reason = tz_rerun_skip_reason(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # The session's fixtures are torn down after this (pytest's runner, in its own pytest_sessionfinish),
    # outside any test's watch when the session ends early (pytest.exit by _ServerWatch): bound them too.
    _HANG_WATCH.arm_named("the session's teardown", SESSION_TEARDOWN_LIMIT_S)
    # tox's later runs take the first run's arguments: "tox -- tests/unit" leaves the serial run and the
    # tz-aware rerun nothing to run, which is not a failure.
    selects_a_part = tz_aware(session.config) or session.config.option.markexpr == "serial"
    if selects_a_part and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


#: A test still running this long after it started (setup and teardown included) has hung where
#: pytest-timeout's alarm cannot reach (in a C call, or in a teardown after the alarm has fired once).
#: ``MJQ_TEST_HARD_LIMIT_S`` sets it (to see the watchdog work).
HARD_LIMIT_S = float(os.environ.get("MJQ_TEST_HARD_LIMIT_S", "420"))
#: The same bound on the teardown of the session's fixtures (dropping the test database, stopping the server).
SESSION_TEARDOWN_LIMIT_S = float(os.environ.get("MJQ_TEST_TEARDOWN_LIMIT_S", "180"))


class _HangWatch:
    """Past :data:`HARD_LIMIT_S`, write every thread's stack and end this test process.

    A hang would otherwise hold CI until its own limit, hours later, with
    no word of where; ended so, pytest-xdist reports the test that crashed
    its worker and goes on with a new one, and the run's summary prints the
    stacks (a worker's stderr is not shown). faulthandler's timer runs
    without the GIL, so it fires whatever the test's threads hold.
    """

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.folder: Path | None = None
        self.out: Any = None

    def start(self, config: pytest.Config) -> None:
        self.folder = config.rootpath / ".hangs"
        if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) starts clean
            for old in self.folder.glob("*.txt"):
                old.unlink()
        self.folder.mkdir(exist_ok=True)
        worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self.out = open(self.folder / f"{worker}-{os.getpid()}.txt", "w")  # noqa: SIM115 (open for the session)

    def arm(self, item: pytest.Item) -> None:
        marker = item.get_closest_marker("timeout")
        limit = HARD_LIMIT_S
        if marker is not None and marker.args:
            limit = max(limit, float(marker.args[0]) + 120)
        self.arm_named(item.nodeid, limit)

    def arm_named(self, what: str, limit: float) -> None:
        self.deadline = time.monotonic() + limit
        if self.out is not None:
            self.out.seek(0)
            self.out.truncate()
            self.out.write(f"{what} ran past {limit:.0f} s; its threads:\n")
            self.out.flush()
        self.rearm()

    def rearm(self) -> None:
        if self.deadline is not None:
            left = max(1.0, self.deadline - time.monotonic())
            faulthandler.dump_traceback_later(left, exit=True, file=self.out or sys.__stderr__ or sys.stderr)

    def disarm(self) -> None:
        self.deadline = None
        faulthandler.cancel_dump_traceback_later()

    def report(self, terminal: Any) -> None:
        if self.folder is None:
            return
        for dump in sorted(self.folder.glob("*.txt")):
            text = dump.read_text()
            if "Thread 0x" in text:  # faulthandler wrote into it: that process was ended
                terminal.write_sep("=", f"hung test ({dump.name})")
                terminal.write_line(text)


_HANG_WATCH = _HangWatch()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _HANG_WATCH.start(session.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _HANG_WATCH.arm(item)
    try:
        yield
    finally:
        _HANG_WATCH.disarm()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact() -> None:
    # pytest's faulthandler plugin cancels the timer on every failure (for pdb): a teardown that hangs
    # after a failure is the case to catch.
    _HANG_WATCH.rearm()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _HANG_WATCH.report(terminalreporter)


FAST = {
    "poll_interval_base_ms": 20,
    "poll_interval_max_ms": 200,
    "retry_delay_ms": 50,
    "lease_ms": 3_000,
    "heartbeat_interval_ms": 500,
    "sweep_interval_ms": 500,
}


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    # A larger storage cache than the demo's: the size-limit tests rewrite near-16 MiB documents many times
    # in one session, and the server stalls for good once its cache fills with versions it cannot drop.
    with EmbeddedMongo(cache_size=TEST_SERVER_CACHE) as server:
        assert server.uri is not None
        yield server.uri


#: The embedded test server's storage cache (see :func:`mongodb_uri`).
TEST_SERVER_CACHE = "4G"
#: How long the check before each test waits for the server to answer one read.
SERVER_ANSWER_S = 60


class _ServerWatch:
    """Before each test on the server: one read, or the session stops with why.

    A server that stopped answering makes every later test wait for its
    timeouts, one after the other, until CI gives up hours later with no
    word of the cause; this names the last test that had it answering.
    """

    def __init__(self) -> None:
        self.client: MongoClient[dict[str, Any]] | None = None
        self.last_test = "(none: the first test on this server)"

    def check(self, uri: str, nodeid: str) -> None:
        if self.client is None:
            timeout_ms = SERVER_ANSWER_S * 1000
            self.client = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms)
        try:
            self.client["mjq_server_watch"]["probe"].find_one()
        except Exception as exc:  # any failure to answer ends the session
            pytest.exit(
                f"the MongoDB test server did not answer a read within {SERVER_ANSWER_S} s before {nodeid} "
                f"({type(exc).__name__}: {exc}); the last test it answered before: {self.last_test}",
                returncode=3,
            )
        self.last_test = nodeid


_SERVER_WATCH = _ServerWatch()


@pytest.fixture(autouse=True)
def _server_answers(request: pytest.FixtureRequest) -> None:
    # Autouse, so it runs before the test's own fixtures (job_model's first drop would hang on a stuck server).
    if "mongodb_uri" in request.fixturenames:
        _SERVER_WATCH.check(request.getfixturevalue("mongodb_uri"), request.node.nodeid)


@pytest.fixture(scope="session")
def db_name(mongodb_uri: str, pytestconfig: pytest.Config) -> Iterator[str]:
    name = f"mjq_test_{uuid.uuid4().hex[:10]}"
    # heartbeatFrequencyMS: after a (simulated) stepdown the driver waits for
    # its monitor to rediscover the primary; pymongo's 10 s default would make
    # each fault test wait that long.
    mongoengine.connect(
        db=name,
        host=mongodb_uri,
        alias=ALIAS,
        uuidRepresentation="standard",
        appname=APP_NAME,
        heartbeatFrequencyMS=500,
        tz_aware=tz_aware(pytestconfig),
    )
    yield name
    mongoengine.disconnect(alias=ALIAS)
    # Bounded: a server that stopped answering (see _ServerWatch) must not hold the session's end forever.
    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=30_000) as client:
        try:
            client.drop_database(name)
        except PyMongoError as exc:
            sys.stderr.write(f"could not drop the test database {name}: {exc!r}\n")


@pytest.fixture
def raw_db(mongodb_uri: str, db_name: str) -> Iterator[Any]:
    """A plain pymongo database handle, independent of the queue's client."""
    with MongoClient(mongodb_uri) as client:
        yield client[db_name]


@pytest.fixture
def job_model(db_name: str) -> type[IntegrationJob]:
    IntegrationJob.drop_collection()
    # The queue's control collection (pause and schedule state) beside it.
    IntegrationJob._get_db().drop_collection(f"{IntegrationJob._get_collection_name()}_control")
    # The worker registry, the admin UI's audit trail and the limits beside it.
    for suffix in ("_workers", "_audit", "_limits", "_limiters"):
        IntegrationJob._get_db().drop_collection(f"{IntegrationJob._get_collection_name()}{suffix}")
    # No ensure_indexes(): a fresh collection, as a new app's first enqueue meets it.
    return IntegrationJob


@pytest.fixture
def make_queue(job_model: type[IntegrationJob]) -> Iterator[Callable[..., PersistentJobQueue[IntegrationJob]]]:
    """Build queues with fast test timings; every one is stopped at teardown."""
    made: list[PersistentJobQueue[IntegrationJob]] = []

    def make(**overrides: Any) -> PersistentJobQueue[IntegrationJob]:
        clock = overrides.pop("clock", None)
        config = {**FAST, **overrides}
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        queue = create_job_queue(job_model=job_model, config=config, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.stop(timeout=10)


@pytest.fixture
def spawn(mongodb_uri, db_name):
    """Start ``python -m mongo_job_queue ARGS`` on the test database; killed at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []
    env = {
        **os.environ,
        "MONGODB_URI": mongodb_uri,
        "MJQ_TEST_DB": db_name,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]),
    }

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mongo_job_queue", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
