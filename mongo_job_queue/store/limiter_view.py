"""What the limiters show (``queue.limits()``, the CLI's ``limits``, Prometheus): one row per limiter document."""

from __future__ import annotations

from typing import Any

from pymongo.collection import Collection

from ..limits import Limit
from . import holders, rates
from .handle import JobStore
from .limit_defs import LimitDefinitions

__all__ = ["view"]


def view(
    store: JobStore, definitions: LimitDefinitions, limiters: Collection[dict[str, Any]]
) -> tuple[list[Limit], list[dict[str, Any]]]:
    """The limits in use and, per limiter: its limit, key value, running holders now, cap and next start.

    One read of the definitions, and one of the limiters only when there
    are definitions; none at all when the pause state just read says no
    limit was ever stored (the Prometheus scrape reads it first).
    """
    limits = definitions.in_use()
    if not limits:
        return [], []
    by_name = {limit.name: limit for limit in limits}
    now = store.now()
    found = store.retry(lambda: list(limiters.find().sort("_id", 1)), "limiters")
    rows = []
    for doc in found:
        limit = by_name.get(doc.get("limit", ""))
        if limit is None:
            continue
        live = holders.live(doc, now)
        eligible = rates.eligible_at(limit, doc)
        rows.append(
            {
                "limit": limit.name,
                "key": limit.key,
                "value": doc.get("value"),
                "running": len(live),
                "max_running": limit.max_running,
                "rate": limit.rate,
                "next_start_at": eligible if eligible is not None and eligible > now else None,
                "holders": [str(h.get("job")) for h in live],
            }
        )
    return limits, rows
