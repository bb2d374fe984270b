"""The job list's filter, parsed from query parameters: allow-listed keys, string values, clamped bounds.

No user-supplied field name or operator reaches MongoDB: each parameter
maps to one fixed field, and every value is a plain string compared by
equality (or a date turned into an ``_id`` bound). A value of one of the
app's own ``filter_fields`` is first converted by that field, as the CLI's
``--field`` converts it (an ``IntField`` compares ``5``, not ``"5"``): a
scalar of the field's type, never a document. Unknown parameters are
ignored; too-long values, and values the field cannot hold, are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from bson import ObjectId

from ...status import ALL_STATUSES

__all__ = ["MAX_BULK", "MAX_PAGE", "FieldValue", "FilterError", "JobFilter", "clamp_int"]

#: Page size bounds of the job list.
MAX_PAGE = 200
DEFAULT_PAGE = 50
#: The most jobs one bulk action touches.
MAX_BULK = 1000
#: The widest created-at range a filter may span.
MAX_RANGE = timedelta(days=90)
_MAX_VALUE = 200
_MAX_UNIQUE_KEY = 1000
_EARLIEST = datetime(2000, 1, 1)


class FilterError(ValueError):
    """A parameter that cannot be a filter value (too long, not a date); shown to the user, escaped."""


#: ``(name, text) -> (stored field, value)``: a filter value of the app's field ``name`` as that field stores it;
#: raises :class:`FilterError` for a value the field cannot hold.
FieldValue = Callable[[str, str], tuple[str, Any]]


def clamp_int(value: Optional[str], default: int, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]``; ``default`` when absent or not a number.

    Only ASCII digits count: ``str.isdigit`` also accepts ``'²'`` and ``'①'``, which ``int()`` refuses.
    """
    text = (value or "").strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()):
        return default
    if len(digits) > 12:  # no int() of a huge string: past the bounds either way
        return low if text.startswith("-") else high
    return max(low, min(high, int(text)))


def _text(args: Mapping[str, str], key: str, limit: int = _MAX_VALUE) -> Optional[str]:
    value = args.get(key)
    if value is None or value.strip() == "":
        return None
    if len(value) > limit:
        raise FilterError(f"{key} is longer than {limit} characters")
    return value


def _date(args: Mapping[str, str], key: str, now: datetime) -> Optional[datetime]:
    value = _text(args, key, 40)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise FilterError(f"{key} is not a date and time (YYYY-MM-DDTHH:MM, UTC)") from exc
    latest = now + timedelta(days=1)
    if parsed.tzinfo is not None:
        try:
            parsed = (parsed - parsed.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]
        except OverflowError:  # before year 1 or after 9999 in UTC: past the bounds either way
            return _EARLIEST if parsed.year == 1 else latest
    return max(_EARLIEST, min(parsed, latest))


@dataclass(frozen=True)
class JobFilter:
    """What the job list shows; every field is optional."""

    statuses: tuple[str, ...] = ()
    queue: Optional[str] = None
    job_type: Optional[str] = None
    unique_key: Optional[str] = None
    error_type: Optional[str] = None
    created_from: Optional[datetime] = None
    created_to: Optional[datetime] = None
    #: The app's own declared fields, by name, as given: ``((name, text), ...)``.
    fields: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def parse(cls, args: Mapping[str, Any], app_fields: Sequence[str], now: datetime) -> JobFilter:
        getlist = getattr(args, "getlist", None)
        raw_statuses = getlist("status") if getlist else [args.get("status", "")]
        statuses = tuple(s for s in ALL_STATUSES if s in set(raw_statuses))
        created_from, created_to = _date(args, "created_from", now), _date(args, "created_to", now)
        if created_from and created_to:
            if created_from > created_to:
                created_from, created_to = created_to, created_from
            created_from = max(created_from, created_to - MAX_RANGE)
        own = tuple((name, value) for name in app_fields if (value := _text(args, f"f_{name}")) is not None)
        return cls(
            statuses=statuses,
            queue=_text(args, "queue"),
            job_type=_text(args, "type"),
            unique_key=_text(args, "unique_key", _MAX_UNIQUE_KEY),
            error_type=_text(args, "error_type"),
            created_from=created_from,
            created_to=created_to,
            fields=own,
        )

    def query(self, field_value: FieldValue) -> dict[str, Any]:
        """The MongoDB filter: a status ``$in`` first (the list index's prefix), then equalities.

        ``field_value`` converts the value of each of the app's fields as that field stores it.

        Raises:
            FilterError: a value the app's field cannot hold.
        """
        query: dict[str, Any] = {"status": {"$in": list(self.statuses or ALL_STATUSES)}}
        for _, stored, value in self._equalities():
            query[stored] = value
        for name, text in self.fields:
            stored, converted = field_value(name, text)
            query[stored] = converted
        ids: dict[str, Any] = {}
        if self.created_from is not None:
            ids["$gte"] = ObjectId.from_datetime(self.created_from)
        if self.created_to is not None:
            ids["$lt"] = ObjectId.from_datetime(self.created_to)
        if ids:
            query["_id"] = ids
        return query

    def _equalities(self) -> list[tuple[str, str, str]]:
        """``(parameter, stored field, value)`` of each equality filter given."""
        given = (
            ("queue", "queue", self.queue),
            ("type", "type", self.job_type),
            ("unique_key", "unique_key", self.unique_key),
            ("error_type", "last_error.type", self.error_type),
        )
        return [(param, stored, value) for param, stored, value in given if value is not None]

    def params(self) -> list[tuple[str, str]]:
        """The filter as query parameters, for links and the hidden fields of forms."""
        out = [("status", s) for s in self.statuses]
        out += [(param, value) for param, _, value in self._equalities()]
        for key, when in (("created_from", self.created_from), ("created_to", self.created_to)):
            if when is not None:
                out.append((key, when.isoformat(timespec="minutes")))
        out += [(f"f_{name}", value) for name, value in self.fields]
        return out

    def describe(self) -> str:
        """In words, for the audit log and the confirmation page."""
        return ", ".join(f"{key}={value}" for key, value in self.params()) or "all jobs"
