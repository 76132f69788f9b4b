"""A bounded real-time wait for the tests that run real parts (servers, brokers, the stack).

Unit tests of the rules use the fake clock instead; these wait for something real to
happen (a message over a broker, a tick of the running controller), polling every
20 ms and failing with what was waited for once the bound has passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

#: The default bound: generous for a loaded 2-core machine, short enough to fail fast.
WAIT_S = 10.0


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    what: str | Callable[[], str],
    wait_s: float = WAIT_S,
    *,
    meanwhile: Callable[[], object] | None = None,
) -> None:
    """Poll ``check`` (a function or a coroutine function) until it is true, for at most
    ``wait_s`` seconds of real time. ``what`` names it in the failure (a function: the state
    then, as it said). ``meanwhile`` runs before each poll: an invariant that must hold all
    along (it raises to fail the test), e.g. that the controller still runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        if meanwhile is not None:
            meanwhile()
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {wait_s:g} s waiting for {what() if callable(what) else what}"
            )
        await asyncio.sleep(0.02)
