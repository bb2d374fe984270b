"""Limit definitions: what ``queue.limit(...)`` stores, checked once, and how a job maps to its limiter keys.

Pure (no database access): :class:`Limit` is the validated definition,
:func:`parse_rate` reads ``"100/min"``, and :meth:`Limit.value_of` finds the
key value a job holds. The store's :class:`~mongo_job_queue.store.limiter.Limiter`
keeps the definitions in the database and admits jobs inside the claim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from .errors import LimitError
from .model import LIBRARY_FIELDS

__all__ = [
    "MAX_RATE_PERIOD_MS",
    "MAX_RUNNING",
    "MUTEX",
    "MUTEX_FIELD",
    "MUTEX_LIMIT",
    "Limit",
    "LimitStore",
    "define_limit",
    "parse_rate",
]

#: The built-in limit behind ``enqueue(mutex_key=...)``: one running job per key.
MUTEX = "mutex"
#: The job field that holds a mutex key.
MUTEX_FIELD = "mutex_key"

_UNITS = {
    "ms": 1, "s": 1_000, "sec": 1_000, "second": 1_000, "m": 60_000, "min": 60_000, "minute": 60_000,
    "h": 3_600_000, "hour": 3_600_000, "d": 86_400_000, "day": 86_400_000,
}  # fmt: skip
#: The word units also take a plural ("5/secs", "2/hours"); "ms", "s", "m", "h" and "d" do not ("5/ss" is refused).
_WORDS = ("sec", "second", "min", "minute", "hour", "day")
_UNIT_NAMES = {**_UNITS, **{f"{word}s": _UNITS[word] for word in _WORDS}}
_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*(\d{0,9})\s*([a-z]+)\s*$")
#: The longest rate period (a longer one is a typo, and its GCRA state would overflow dates).
MAX_RATE_PERIOD_MS = 366 * 86_400_000
#: The largest ``max_running`` (more is no limit, and a bigger number is a typo).
MAX_RUNNING = 1_000_000
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_MAX_NAME = 200
#: Keys under the job's payload are the user's own, though ``data`` is a library field.
_USER_ROOT = "data."


def parse_rate(rate: Any) -> tuple[int, int]:
    """``"100/min"`` (also ``"5/s"``, ``"1000/hour"``, ``"3/10s"``) as ``(count, period_ms)``.

    Raises:
        LimitError: not such a string, a count or period of 0, or a period over 366 days.
    """
    if not isinstance(rate, str):
        raise LimitError(f"rate must be a str such as '100/min', got {rate!r:.80}")
    match = _RATE.match(rate.lower())
    if match is None or match.group(3) not in _UNIT_NAMES:
        raise LimitError(f"rate must look like '100/min' (units: ms, s, min, hour, day), got {rate!r:.80}")
    count, times = int(match.group(1)), int(match.group(2) or 1)
    period_ms = times * _UNIT_NAMES[match.group(3)]
    if count < 1 or period_ms < 1:
        raise LimitError(f"rate needs a count and a period of at least 1, got {rate!r:.80}")
    if period_ms > MAX_RATE_PERIOD_MS:
        raise LimitError(f"rate period must be at most 366 days, got {rate!r:.80}")
    return count, period_ms


@dataclass(frozen=True)
class Limit:
    """One limit: at most ``max_running`` running jobs and at most ``rate`` starts per value of ``key``.

    ``key`` is a job field (a dotted path into the document, say
    ``"organization"`` or ``"data.tenant"``); jobs without a value are not
    limited. No key: one limiter for every job the limit covers (with
    ``job_types``, a per-handler limit). ``fair`` serves the key values in turn.
    """

    name: str
    key: Optional[str] = None
    max_running: Optional[int] = None
    rate: Optional[str] = None
    burst: int = 1
    job_types: tuple[str, ...] = ()
    fair: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`LimitError` naming the first bad argument."""
        name = self.name
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME or "\x1f" in name:
            raise LimitError(f"limit name must be a non-empty str of at most {_MAX_NAME} characters, got {name!r:.80}")
        key = self.key
        if key is not None and (not isinstance(key, str) or not _FIELD.match(key)):
            raise LimitError(f"limit key must be a job field name such as 'organization', got {key!r:.80}")
        if self.max_running is not None and (
            isinstance(self.max_running, bool)
            or not isinstance(self.max_running, int)
            or not 1 <= self.max_running <= MAX_RUNNING
        ):
            raise LimitError(f"max_running must be an int >= 1 and <= {MAX_RUNNING}, got {self.max_running!r:.80}")
        if self.rate is not None:
            parse_rate(self.rate)
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or not 1 <= self.burst <= 1_000_000:
            raise LimitError(f"burst must be an int from 1 to 1000000, got {self.burst!r:.80}")
        if not isinstance(self.job_types, tuple) or not all(isinstance(t, str) and t for t in self.job_types):
            raise LimitError(f"job_types must be non-empty strs, got {self.job_types!r:.80}")
        if self.max_running is None and self.rate is None and not self.fair:
            raise LimitError(f"limit {name!r} needs max_running, rate or fair=True")
        if self.fair and key is None:
            raise LimitError(f"limit {name!r}: fair=True needs a key to take turns by")

    @property
    def rate_ms(self) -> Optional[tuple[int, int]]:
        """``(count, period_ms)`` of the rate, or None."""
        return None if self.rate is None else parse_rate(self.rate)

    def applies_to(self, doc: Mapping[str, Any]) -> bool:
        """Whether this limit covers the job of ``doc`` (its type, and a value of its key)."""
        if self.job_types and doc.get("type") not in self.job_types:
            return False
        return self.key is None or self.value_of(doc) is not None

    def value_of(self, doc: Mapping[str, Any]) -> Any:
        """The job's value of ``key`` ("" without a key); None when the job has none."""
        if self.key is None:
            return ""
        value: Any = doc
        for part in self.key.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        if value is None or isinstance(value, (Mapping, list)):
            return None
        return value

    def as_doc(self) -> dict[str, Any]:
        """The stored form in the limits collection."""
        return {
            "_id": self.name,
            "key": self.key,
            "max_running": self.max_running,
            "rate": self.rate,
            "burst": self.burst,
            "job_types": list(self.job_types),
            "fair": self.fair,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Limit:
        """The definition of a stored document (raises LimitError if it was edited into nonsense)."""
        return cls(
            name=doc["_id"],
            key=doc.get("key"),
            max_running=doc.get("max_running"),
            rate=doc.get("rate"),
            burst=doc.get("burst") or 1,
            job_types=tuple(doc.get("job_types") or ()),
            fair=bool(doc.get("fair")),
        )

    @classmethod
    def build(
        cls,
        name: str,
        *,
        key: Optional[str] = None,
        max_running: Optional[int] = None,
        rate: Optional[str] = None,
        burst: int = 1,
        job_types: Iterable[str] = (),
        fair: bool = False,
    ) -> Limit:
        """A checked definition from ``queue.limit``'s arguments; ``mutex`` is reserved."""
        if name == MUTEX:
            raise LimitError(f"limit name {MUTEX!r} is reserved for enqueue(mutex_key=...)")
        if isinstance(job_types, str):
            job_types = (job_types,)
        limit = cls(name, key, max_running, rate, burst, tuple(job_types), fair)
        root = None if key is None else key.split(".")[0]
        if key is not None and root in LIBRARY_FIELDS and not key.startswith(_USER_ROOT):
            raise LimitError(
                f"limit key {key!r:.80} names a field of the library; use a field of your own or data.<name>"
            )
        return limit


class LimitStore(Protocol):
    """Where definitions are stored (the store's :class:`~mongo_job_queue.store.limiter.Limiter`)."""

    def define(self, limit: Limit) -> None: ...


def define_limit(store: LimitStore, name: str, **options: Any) -> Limit:
    """Check ``queue.limit``'s arguments, then store the limit; an unknown option is a LimitError too."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise LimitError(
            f"unknown limit option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(_OPTIONS))}"
        )
    limit = Limit.build(name, **options)
    store.define(limit)
    return limit


_OPTIONS = frozenset({"key", "max_running", "rate", "burst", "job_types", "fair"})

#: The built-in mutex limit (not stored).
MUTEX_LIMIT = Limit(MUTEX, key=MUTEX_FIELD, max_running=1)
