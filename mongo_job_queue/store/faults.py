"""What a database error means to the store: try again, too large, or which unique index refused a job.

Every component judges errors by these three readers, so a retried call
and a refused insert are told apart the same way on every path.
"""

from __future__ import annotations

import re

from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

__all__ = ["duplicate_field", "is_too_large", "is_transient", "short_error"]

# Server error codes that mean "try again, maybe elsewhere" (replica-set state
# changes, shutdown, network). pymongo maps most to AutoReconnect/NotPrimaryError,
# but a failCommand or an old server can surface them as OperationFailure.
_TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})

#: Server codes for "the document would be too large": BSONObjectTooLarge, and
#: the update's "Resulting document after update is larger than 16 MiB".
_TOO_LARGE_CODES = frozenset({10334, 17419})

#: The queue's unique indexes (and ``_id``'s) by name, as an error message names them: the field each is on.
_INDEX_FIELDS = {"_id_": "_id", "mjq_unique": "unique_key", "mjq_schedule": "schedule"}
#: ``E11000 duplicate key error collection: <ns> index: <name> dup key: ...``
_INDEX_IN_MESSAGE = re.compile(r"\bindex: (\S+)")


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same call may succeed (and may already have)."""
    if isinstance(exc, (AutoReconnect, ConnectionFailure, WriteConcernError)):
        return True
    if isinstance(exc, PyMongoError) and exc.timeout:
        # db_timeout_ms ran out (NetworkTimeout on a dead connection, maxTimeMS,
        # server selection, a bulk write's last error): that says nothing about
        # the lease. The call may have applied, so it is retried like a failover.
        return True
    if isinstance(exc, BulkWriteError):
        # A bulk write whose only errors are write-concern errors applied its
        # writes; the reply just could not confirm replication. Retryable (and
        # the callers' retries are idempotent), unlike a rejected write.
        details = exc.details or {}
        return not details.get("writeErrors") and bool(details.get("writeConcernErrors"))
    if isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES


def is_too_large(exc: BaseException) -> bool:
    """True for a write that the driver or the server refused because a document would exceed 16 MiB."""
    if isinstance(exc, DocumentTooLarge):
        return True
    if isinstance(exc, OperationFailure):
        details = exc.details or {}
        return exc.code in _TOO_LARGE_CODES or details.get("codeName") == "BSONObjectTooLarge"
    return False


def short_error(exc: BaseException) -> str:
    """The server's message alone: ``str()`` of a WriteError carries the full reply, the refused update included."""
    details = getattr(exc, "details", None) or {}
    return str(details.get("errmsg") or exc)[:500]


def duplicate_field(exc: DuplicateKeyError) -> str:
    """The first field of the unique index a duplicate-key error names (``_id``, ``unique_key``, ...), or ``"?"``.

    The server's ``keyPattern`` says it; an older server (or a mock) only
    names the index in its message, and some say nothing: ``"?"``. The
    index name is read as a whole word, so an app's ``ref_id_1`` is not
    taken for ``_id_``.
    """
    details = exc.details or {}
    key = list(details.get("keyPattern") or {})
    if key:
        return str(key[0])
    named = _INDEX_IN_MESSAGE.search(str(details.get("errmsg", exc)))
    return _INDEX_FIELDS.get(named.group(1), "?") if named else "?"
