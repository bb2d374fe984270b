"""Handler registration: both forms, and every invalid registration rejected with HandlerError."""

from __future__ import annotations

from typing import Any

import pytest
import tenacity

from mongo_job_queue import HandlerError


def test_register_handler_returns_the_function(queue: Any) -> None:
    def send_email(job: Any) -> None:
        return None

    assert queue.register_handler("email", send_email) is send_email
    assert "email" in queue.registry
    assert queue.registry.get("email").fn is send_email
    assert queue.registry.types() == ["email"]


def test_decorator_registers_and_returns_the_function(queue: Any) -> None:
    @queue.handler("resize", max_retries=2, wait=tenacity.wait_fixed(1))
    def resize(job: Any) -> str:
        return "done"

    assert resize(None) == "done"  # still the plain function
    registered = queue.registry.get("resize")
    assert registered.fn is resize
    assert registered.max_retries == 2
    assert registered.policy.wait is not None


def test_types_are_sorted(queue: Any) -> None:
    for name in ("b", "c", "a"):
        queue.register_handler(name, print)
    assert queue.registry.types() == ["a", "b", "c"]
    assert len(queue.registry) == 3


def test_duplicate_type_is_rejected_and_names_it(queue: Any) -> None:
    def first(job: Any) -> None:
        return None

    def second(job: Any) -> None:
        return None

    queue.register_handler("report", first)
    with pytest.raises(HandlerError) as info:
        queue.register_handler("report", second)
    assert "'report'" in str(info.value)
    assert "first" in str(info.value)
    assert "second" in str(info.value)
    assert queue.registry.get("report").fn is first  # the original stays


def test_duplicate_via_decorator_is_rejected(queue: Any) -> None:
    queue.register_handler("x", print)
    with pytest.raises(HandlerError, match="'x'"):

        @queue.handler("x")
        def again(job: Any) -> None:
            return None


@pytest.mark.parametrize("fn", [None, 42, "handler"])
def test_non_callable_handler_is_rejected(queue: Any, fn: Any) -> None:
    with pytest.raises(HandlerError, match="must be callable"):
        queue.register_handler("t", fn)
    assert len(queue.registry) == 0


@pytest.mark.parametrize("job_type", ["", None, 5])
def test_invalid_job_type_is_rejected(queue: Any, job_type: Any) -> None:
    with pytest.raises(HandlerError, match="job type must be a non-empty str"):
        queue.register_handler(job_type, print)
    assert len(queue.registry) == 0


@pytest.mark.parametrize("max_retries", [-1, True, "3", 1.5])
def test_invalid_max_retries_is_rejected(queue: Any, max_retries: Any) -> None:
    with pytest.raises(HandlerError, match="max_retries for 't'"):
        queue.register_handler("t", print, max_retries=max_retries)
    assert "t" not in queue.registry


def test_max_retries_zero_is_allowed(queue: Any) -> None:
    queue.register_handler("t", print, max_retries=0)
    assert queue.registry.get("t").max_retries == 0


@pytest.mark.parametrize("strategy", ["stop", "wait", "retry"])
def test_non_callable_strategies_are_rejected(queue: Any, strategy: str) -> None:
    with pytest.raises(HandlerError, match=f"{strategy}="):
        queue.register_handler("t", print, **{strategy: 5})
    assert "t" not in queue.registry


def test_tenacity_strategies_are_accepted(queue: Any) -> None:
    queue.register_handler(
        "t",
        print,
        stop=tenacity.stop_after_attempt(2),
        wait=tenacity.wait_fixed(5),
        retry=tenacity.retry_if_exception_type(IOError),
    )
    policy = queue.registry.get("t").policy
    assert policy.stop is not None
    assert policy.wait is not None
    assert policy.retry is not None
