"""This host's clock against the server's, measured as the store measures it (``hello.localTime``)."""

from __future__ import annotations

from .checks import FAIL, PASS, WARN, Check
from .probe import Probe

__all__ = ["OFFSET_FAIL_S", "OFFSET_WARN_S", "check_clock"]

#: Without ``sync_clock``, an offset this large (seconds) warns: leases and due times shift by it.
OFFSET_WARN_S = 0.25
#: Without ``sync_clock``, an offset this large fails: a lease judged on this host expires a second early or late.
OFFSET_FAIL_S = 1.0


def check_clock(probe: Probe) -> Check:
    """With ``sync_clock`` (the default) the queue corrects the offset; without it, the offset shifts every lease."""
    store = probe.store
    store.sync_clock()
    offset = store.clock_offset.total_seconds()
    side = "behind" if offset > 0 else "ahead of"
    detail = f"this host's clock is {abs(offset):.3f} s {side} the server's"
    if store.config.sync_clock:
        if abs(offset) >= 60:
            return Check(
                "clock offset",
                WARN,
                f"{detail}; the queue corrects its own times by it (sync_clock)",
                "fix this host's time sync (NTP): logs and the app's own times still use it",
            )
        return Check("clock offset", PASS, f"{detail}; corrected by sync_clock")
    lease_s = store.config.lease_ms / 1000
    if abs(offset) >= OFFSET_FAIL_S:
        return Check(
            "clock offset",
            FAIL,
            f"{detail} and sync_clock is off: this host expires leases {abs(offset):.1f} s "
            f"{'late' if offset > 0 else 'early'} (lease {lease_s:g} s), and runs delayed jobs off by as much",
            "turn sync_clock on, or fix this host's time sync (NTP)",
        )
    if abs(offset) >= OFFSET_WARN_S:
        return Check("clock offset", WARN, f"{detail} and sync_clock is off", "turn sync_clock on, or fix NTP")
    return Check("clock offset", PASS, f"{detail} (sync_clock off)")
