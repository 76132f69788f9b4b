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
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


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


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


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
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        await fut

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
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self._now = target

    run_for = advance


async def within(clock: Clock, seconds: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` for at most ``seconds`` of ``clock`` time.

    Raises :class:`TimeoutError` ("no answer within N s") and cancels
    the work when the clock's deadline passes first. Measured on the injected
    clock, so a test on a :class:`FakeClock` sees the timeout without waiting.
    """
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise TimeoutError(f"no answer within {seconds:g} s")
    return work.result()
