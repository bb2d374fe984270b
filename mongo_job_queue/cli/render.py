"""How the commands print what they read: UTC times, JSON of stored documents, aligned tables."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Optional, TextIO

__all__ = ["iso", "jsonable", "print_json", "print_table"]


def iso(moment: Optional[datetime]) -> Optional[str]:
    """A stored (naive UTC) time as ``2026-05-01T10:00:00Z``; None stays None."""
    return None if moment is None else moment.isoformat(timespec="seconds") + "Z"


def jsonable(value: Any) -> Any:
    """A stored value as JSON can hold it: ids as strings, times as :func:`iso`, anything else BSON has as text."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return iso(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # ObjectId, UUID, Decimal128, bytes...


def print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(jsonable(value), indent=2), file=out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Columns as wide as their widest cell, two spaces apart; the last one is not padded."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    for line in (headers, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out)
