"""Deprecated: moved to :mod:`mongo_job_queue.dev.embedded` (a development tool, not part of the runtime)."""

from typing import TYPE_CHECKING

from ._deprecation import moved

if TYPE_CHECKING:  # type checkers see the names; at run time each access warns
    from .dev.embedded import EmbeddedMongo, EmbeddedServerError

__all__ = ["EmbeddedMongo", "EmbeddedServerError"]
__getattr__ = moved(__name__, "mongo_job_queue.dev.embedded", [*__all__, "INSTALL_HINT"])
