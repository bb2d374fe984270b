"""The optional extras: what a feature says when the packages of its extra are not installed.

One wording everywhere, so every such message names the extra and the
command that installs it.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["extra_hint", "missing_extra"]


def extra_hint(extra: str, package: Optional[str] = None) -> str:
    """``the 'x' extra: python -m pip install '.[x]' in a checkout of mongo-job-queue[, or pip install package]``."""
    hint = f"the {extra!r} extra: python -m pip install '.[{extra}]' in a checkout of mongo-job-queue"
    return f"{hint}, or pip install {package}" if package else hint


def missing_extra(module: str, needs: str, extra: str, package: Optional[str] = None) -> ImportError:
    """The ImportError an integration raises, from the original one, when the packages of its extra are missing."""
    return ImportError(f"{module} needs {needs}, {extra_hint(extra, package)}")
