"""Typed forwarding: a method passing its arguments on takes, for type checkers and docs, the parameters of its callee.

A parameter list is written once, where the arguments are used; the public
methods that forward to it (the queue's, the Flask extension's) are typed
with it through a :class:`~typing.ParamSpec`, so mypy checks a caller's
keywords and their types against the one list, and :func:`inspect.signature`
(which Sphinx and IDEs read) shows it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

__all__ = ["decorator_form", "method_signature_of", "parameters_of", "signature_of"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])


def parameters_of(source: Callable[P, object]) -> Callable[[Callable[..., R]], Callable[Concatenate[Any, P], R]]:
    """Type the decorated method as taking the function ``source``'s parameters after ``self``; it keeps its return."""

    def typed(method: Callable[..., R]) -> Callable[Concatenate[Any, P], R]:
        _show(method, source, with_self=True, own_return=True)
        return method

    return typed


def signature_of(source: Callable[P, R]) -> Callable[[Callable[..., Any]], Callable[P, R]]:
    """Type the decorated function as ``source`` (a function or class), parameters and return, generic ones too."""

    def typed(function: Callable[..., Any]) -> Callable[P, R]:
        _show(function, source, with_self=False)
        return function

    return typed


def method_signature_of(
    source: Callable[Concatenate[Any, P], R],
) -> Callable[[Callable[..., Any]], Callable[Concatenate[Any, P], R]]:
    """Type the decorated method as the method ``source`` of another class, parameters and return."""

    def typed(method: Callable[..., Any]) -> Callable[Concatenate[Any, P], R]:
        _show(method, source, with_self=False)
        return method

    return typed


def decorator_form(
    register: Callable[Concatenate[S, str, F, P], F],
) -> Callable[Concatenate[S, str, P], Callable[[F], F]]:
    """``form(job_type, **options)(fn)`` for ``register(job_type, fn, **options)``, typed with its options."""

    def form(self: S, job_type: str, *args: P.args, **kwargs: P.kwargs) -> Callable[[F], F]:
        def decorate(fn: F) -> F:
            return register(self, job_type, fn, *args, **kwargs)

        return decorate

    # Typed with job_type positional-only (Concatenate); at run time it may still be passed by keyword.
    form.__doc__ = f"Decorator form of :meth:`{register.__name__}`."
    signature = inspect.signature(register)
    parameters = [p for name, p in signature.parameters.items() if name != "fn"]
    form.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation="Callable[[F], F]"
    )
    return cast("Callable[Concatenate[S, str, P], Callable[[F], F]]", form)


def _show(target: Callable[..., Any], source: Callable[..., Any], *, with_self: bool, own_return: bool = False) -> None:
    # What inspect.signature, hence Sphinx and IDEs, report for the forwarding function.
    signature = inspect.signature(source)
    parameters = list(signature.parameters.values())
    if with_self:
        parameters.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    returns = signature.return_annotation
    if own_return or isinstance(source, type):  # a class's is its __init__'s, None
        returns = inspect.signature(target).return_annotation
    target.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation=returns
    )
