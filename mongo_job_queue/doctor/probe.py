"""What the checks read from the server, each read once, through the queue's own store and connection."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from ..store.handle import JobStore

__all__ = ["Probe"]

_COMMAND_NOT_FOUND = 59


class Probe:
    """The queue's store and the server's ``hello`` and ``buildInfo`` replies, read once per doctor run.

    The collection is the model's own, as MongoEngine connects it, without the
    store's index build: the doctor reports missing indexes, it never creates them.
    """

    #: Why ``getDefaultRWConcern`` was refused (a user without the privilege), or None.
    defaults_refused: str | None = None

    def __init__(self, store: JobStore) -> None:
        self.store = store

    @functools.cached_property
    def collection(self) -> Collection[dict[str, Any]]:
        """The jobs collection, as the app's connection and the model's meta configure it."""
        raw: Collection[dict[str, Any]] = self.store.model._get_collection()
        return raw

    @property
    def database(self) -> Database[dict[str, Any]]:
        return self.collection.database

    def ping(self, timeout_s: float) -> None:
        """Reach the server within ``timeout_s`` or raise: unreachable, every check would wait its own bound."""
        with pymongo.timeout(timeout_s):
            self.database.command("ping")

    def command(self, name: str, **kwargs: Any) -> Mapping[str, Any]:
        """An admin command under the store's time bound."""
        with self.store.bounded():
            reply: Mapping[str, Any] = self.database.client.admin.command(name, **kwargs)
            return reply

    @functools.cached_property
    def hello(self) -> Mapping[str, Any]:
        with self.store.bounded():
            reply: Mapping[str, Any] = self.database.command("hello")
            return reply

    @functools.cached_property
    def build_info(self) -> Mapping[str, Any]:
        return self.command("buildInfo")

    @property
    def version(self) -> tuple[int, ...]:
        """The server's version, e.g. ``(7, 0, 12)``; empty when it does not say."""
        array = self.build_info.get("versionArray")
        if isinstance(array, list) and array:
            return tuple(int(part) for part in array[:3])
        text = str(self.build_info.get("version", ""))
        parts = [p for p in text.split("-")[0].split(".") if p.isdigit()]
        return tuple(int(p) for p in parts[:3])

    @property
    def is_sharded(self) -> bool:
        """Connected through ``mongos``."""
        return self.hello.get("msg") == "isdbgrid"

    @property
    def is_replica_set(self) -> bool:
        return bool(self.hello.get("setName"))

    @property
    def has_failover(self) -> bool:
        """Whether an acknowledged write can be rolled back by an election (replica set, or shards that are)."""
        return self.is_replica_set or self.is_sharded

    def default_rw_concern(self) -> Mapping[str, Any] | None:
        """The cluster-wide defaults (MongoDB 4.4+), or None when the server does not say.

        A refusal (not an unknown command) is kept in :attr:`defaults_refused`:
        then the defaults are unknown, not absent.
        """
        try:
            return self.command("getDefaultRWConcern")
        except OperationFailure as exc:
            if exc.code != _COMMAND_NOT_FOUND:
                self.defaults_refused = str(exc.details.get("errmsg") if exc.details else exc) or repr(exc)
            return None
