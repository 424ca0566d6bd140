"""A loop that cannot die silently: the dispatchers' watchers run one pass every
``interval`` seconds (sooner when woken); a pass that raises is logged and tried again
after a backoff, and ``last_pass`` says when one last succeeded (``/healthz`` fails when
that is too long ago)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    """What a watcher says of itself: when its last pass succeeded (epoch seconds), how
    long ago, how many passes failed since, and the last failure."""

    last_pass: float | None
    age: float | None
    failures: int
    last_error: str | None

    def stale(self, limit: float) -> bool:
        """Whether no pass succeeded within ``limit`` seconds."""
        return self.age is None or self.age > limit


class Watcher:
    """Runs ``step`` until stopped: every ``interval`` seconds, or at once after
    ``wake()``. After a failure it waits ``min(interval, 1 s) · 2^(failures - 1)``, at
    most ``interval``."""

    def __init__(self, name: str, step: Callable[[], Awaitable[None]], interval: float) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self.last_pass: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start looping (the first pass at once)."""
        self.last_pass = time.time()  # the dispatcher's start was a pass of its own
        self._task = asyncio.create_task(self._loop(), name=self.name)

    def wake(self) -> None:
        """Run a pass now (after the one under way, if any)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop looping (a pass under way is cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def health(self) -> Health:
        """The watcher's health now."""
        age = None if self.last_pass is None else time.time() - self.last_pass
        return Health(self.last_pass, age, self.failures, self.last_error)

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as error:
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"[:500]
                wait = min(self.interval, min(self.interval, 1.0) * 2 ** (self.failures - 1))
                log.exception(
                    "%s: pass failed (%d in a row), trying again in %.1f s",
                    self.name,
                    self.failures,
                    wait,
                )
                await asyncio.sleep(wait)
                continue
            self.failures, self.last_pass = 0, time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
