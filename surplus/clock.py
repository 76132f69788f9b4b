"""Time, injected. The only module that touches ``time`` and ``asyncio.sleep``.

``now()`` is monotonic seconds (intervals, deadlines); ``wall()`` is Unix time
for timestamps shown to people. :class:`FakeClock` lets tests run an hour of
the control loop in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Source of time for everything in surplus."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Unix time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    def timer(self, seconds: float) -> asyncio.Future[None]:
        """A future that completes ``seconds`` of this clock's time from now (cancel it to drop it)."""
        ...


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timer(self, seconds: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(max(0.0, seconds), _wake, fut)
        fut.add_done_callback(lambda _: handle.cancel())
        return fut


class FakeClock:
    """A clock that only moves when told to.

    ``advance(dt)`` moves time forward and wakes every sleeper whose deadline
    has passed, in deadline order, letting each run before the next wakes.
    ``run_for(dt)`` is the usual way to drive asyncio code: it jumps from one
    sleeper's deadline to the next until ``dt`` has passed.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_764_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        await self.timer(seconds)

    def timer(self, seconds: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        return fut

    def set(self, now: float) -> None:
        """Jump to ``now`` without waking anyone (for synchronous tests)."""
        if now < self._now:
            raise ValueError("a clock does not go backwards")
        self._now = now

    async def settle(self, rounds: int = 50) -> None:
        """Let ready tasks run until they block again (at most ``rounds`` loop passes)."""
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            await asyncio.sleep(0)
            # The default loop keeps runnable callbacks in ``_ready``; once only
            # we are left, everyone else is blocked on the clock or on I/O.
            if not getattr(loop, "_ready", True):
                break

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers on the way."""
        await self.settle()
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():  # a cancelled timer (e.g. a meter read that finished in time)
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await self.settle()
        self._now = target

    run_for = advance
