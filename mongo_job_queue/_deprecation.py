"""Old import paths that keep working with a ``DeprecationWarning``: one module ``__getattr__`` for each."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["moved"]


def moved(old: str, new: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that serves ``names`` from module ``new``, warning at each access."""
    served = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in served:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} is deprecated: import it from {new}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
