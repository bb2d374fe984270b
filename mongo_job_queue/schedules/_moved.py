"""The deprecation shims of the schedule modules' old paths, from before :mod:`mongo_job_queue.schedules`."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["moved_attribute"]


def moved_attribute(old_module: str, name: str, new_modules: Mapping[str, str]) -> Any:
    """``name`` from its new module, with a DeprecationWarning saying where; the body of a shim's ``__getattr__``."""
    new_module = new_modules.get(name)
    if new_module is None:
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    public = name in importlib.import_module("mongo_job_queue").__all__
    warnings.warn(
        f"{old_module}.{name} moved to {new_module}.{name}; import it from "
        f"{'mongo_job_queue' if public else new_module}",
        DeprecationWarning,
        stacklevel=3,  # the import statement, past this function and the shim's __getattr__
    )
    return getattr(importlib.import_module(new_module), name)
