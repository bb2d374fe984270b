"""The handler threads of one start: a pool of fixed size, which replaces a thread abandoned to a time limit.

A handler that ignores its time limit holds its thread for as long as it
likes (see :mod:`.timelimits`). When the watchdog gives up on it, the pool
starts a fresh thread in its place, first to record the abandoned attempt,
then to take work like the others; the abandoned thread leaves the pool and
exits once its handler returns, if it ever does. So the pool keeps its size,
and a ``stop()`` waits for the threads of the pool, never for an abandoned one.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Optional

from .completer import Completer
from .executor import Executor, WorkQueue
from .timelimits import Watch

__all__ = ["HandlerPool", "LoopArgs"]

#: What every thread of a pool runs the handler loop on: its start's work queue, stop event and completer.
LoopArgs = tuple[WorkQueue, threading.Event, Completer]


class HandlerPool:
    """``size`` threads running :meth:`Executor.handler_loop` on one start's work queue; ``threads`` is kept current."""

    def __init__(
        self,
        executor: Executor,
        loop: LoopArgs,
        *,
        size: int,
        name: str,
        on_replace: Callable[[threading.Thread, threading.Thread], None],
    ) -> None:
        self.executor = executor
        self.loop = loop
        self.on_replace = on_replace
        #: The pool's threads, the same list object for the pool's life: a replacement takes its slot.
        self.threads = [self._thread(f"{name}-handler-{i}", None) for i in range(size)]
        self._lock = threading.Lock()
        self._replacements = itertools.count(1)

    def _thread(self, name: str, abandoned: Optional[Watch]) -> threading.Thread:
        return threading.Thread(target=self._run, args=(abandoned,), name=name, daemon=True)

    def _run(self, abandoned: Optional[Watch]) -> None:
        if abandoned is not None:
            self.executor.record_abandoned(abandoned)
        self.executor.handler_loop(*self.loop, abandon=self.replace)

    def replace(self, watch: Watch) -> None:
        """Put a fresh thread in the place of the one running ``watch``'s abandoned run (the watchdog calls it)."""
        old = watch.thread
        new = self._thread(f"{old.name.split('~')[0]}~{next(self._replacements)}", watch)
        new.start()
        with self._lock:
            self.threads[:] = [new if t is old else t for t in self.threads]
        self.on_replace(old, new)
