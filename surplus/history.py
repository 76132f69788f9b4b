"""Charging-session history: the controller's ticks into :mod:`surplus.sessions`, its writes into
:mod:`surplus.history_store` (in one worker thread, so a slow SD card never stalls the loop).

An open session is written when it starts, at an unplug, every ``flush_every_s``,
when it ends and at shutdown. How sessions are counted: :mod:`surplus.sessions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from .clock import Clock
from .history_store import HistoryError, SessionStore
from .sessions import REPLUG_S, RowWrite, SessionRecord, Sessions, vehicle_present
from .state import ChargerView, LoopState, StateListener
from .strategy import PAST_SESSIONS, PastSession

__all__ = [
    "REPLUG_S",
    "History",
    "HistoryError",
    "SessionRecord",
    "SessionStore",
    "attach",
    "vehicle_present",
]

log = logging.getLogger("surplus.history")


class Chargers(Protocol):
    """What a history needs to know at the start: the clock and the chargers."""

    clock: Clock

    @property
    def charger_ids(self) -> Sequence[str]: ...


class Publisher(Chargers, Protocol):
    """What :func:`attach` needs: also the published states (:class:`surplus.loop.Controller`), and
    where the strategies find each charger's past sessions."""

    def subscribe(self, listener: StateListener) -> None: ...

    def use_past_sessions(self, past: Callable[[str], tuple[PastSession, ...]]) -> None: ...


class History:
    """Follows the sessions tick by tick and keeps them in a :class:`SessionStore`."""

    def __init__(self, store: SessionStore, controller: Chargers, *, flush_every_s: float = 60.0) -> None:
        self._store = store
        self._clock = controller.clock
        self._sessions = Sessions(controller.charger_ids, flush_every_s=flush_every_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surplus-history")
        self._jobs: deque[Future[None]] = deque()
        self._failing = False
        self._closed = False
        orphans = self._sessions.restore(store.last_ends(), store.open_rows())
        if orphans:
            store.write(orphans)
        #: Per charger, its latest ended sessions in which the car drew (for the strategies).
        self._past: dict[str, deque[PastSession]] = {
            cid: deque(maxlen=PAST_SESSIONS) for cid in controller.charger_ids
        }
        for cid, records in store.past_sessions(PAST_SESSIONS).items():
            if cid in self._past:
                self._past[cid].extend(_past(r) for r in records)
        self._past_now = {cid: tuple(kept) for cid, kept in self._past.items()}

    @property
    def path(self) -> str:
        return self._store.path

    # -- the tick ------------------------------------------------------------------------------
    def on_state(self, state: LoopState) -> None:
        """State listener: follow each charger's session; write what is due (in the worker).

        The modes a session ran in come from the same published state (mode, and
        "override" while a person's override holds)."""
        self._reap()
        if self._closed:
            return
        snapshot = state.snapshot
        now_wall = self._clock.wall()
        wall = now_wall - (self._clock.now() - snapshot.at_s)
        grid = snapshot.grid_power_w
        writes: list[RowWrite] = []
        for cid, reading in snapshot.chargers.items():
            charger_state = reading.state
            if charger_state is None or reading.error is not None:
                continue
            writes += self._sessions.observe(
                cid,
                charger_state,
                at_s=snapshot.at_s,
                wall=wall,
                grid=grid,
                modes=functools.partial(_modes, state.chargers.get(cid)),
                now_wall=now_wall,
            )
        if writes:
            self._note_ends(writes)
            self._submit(writes)

    def past_sessions(self, charger_id: str) -> tuple[PastSession, ...]:
        """The charger's latest ended sessions in which the car drew, oldest first (for its strategy)."""
        return self._past_now.get(charger_id, ())

    def _note_ends(self, writes: Sequence[RowWrite]) -> None:
        for w in writes:
            r = w.record
            kept = self._past.get(r.charger_id)
            if r.ended_at is not None and r.car_full is not None and kept is not None:
                kept.append(_past(r))
                self._past_now[r.charger_id] = tuple(kept)

    # -- the writer thread --------------------------------------------------------------------
    def _submit(self, writes: list[RowWrite]) -> None:
        self._jobs.append(self._executor.submit(self._store.write, writes))

    def _reap(self) -> None:
        """Log a failed write once per failure streak (the next write carries the full values again)."""
        # One worker: jobs finish in the order they were submitted.
        while self._jobs and self._jobs[0].done():
            exc = self._jobs.popleft().exception()
            if exc is not None and not self._failing:
                log.error("history: cannot write %s: %s (retrying with the next write)", self.path, exc)
                self._failing = True
            elif exc is None and self._failing:
                log.info("history: writes work again")
                self._failing = False

    async def drain(self) -> None:
        """Wait until every write handed to the worker is done."""
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(job)
        self._reap()

    # -- reading --------------------------------------------------------------------------------
    async def sessions(self, *, charger_id: str | None = None, limit: int = 20) -> list[SessionRecord]:
        """The newest ``limit`` sessions, newest first; open ones with their values of now."""
        if self._closed:
            raise RuntimeError("the session history is closed")
        job = self._executor.submit(self._store.recent, charger_id, limit)
        records = await asyncio.wrap_future(job)
        live = {s.row_id: s for s in self._sessions.open_sessions()}
        return [live[r.id].record() if r.ended_at is None and r.id in live else r for r in records]

    def open_sessions(self) -> list[SessionRecord]:
        """The sessions open now, as they stand (not waiting for the file)."""
        return [s.record() for s in self._sessions.open_sessions()]

    async def close(self, *, save: bool = True) -> None:
        """Save the open sessions (they continue after a restart; one whose car is unplugged ends),
        finish the writes, close the file.

        ``save=False`` skips the final save: what a crash leaves behind (for tests).
        """
        if self._closed:
            return
        if save:
            writes = self._sessions.close()
            if writes:
                self._submit(writes)
        self._closed = True
        await self.drain()
        self._executor.shutdown(wait=True)
        self._store.close()


def _past(r: SessionRecord) -> PastSession:
    assert r.ended_at is not None and r.car_full is not None
    return PastSession(ended_at=r.ended_at, energy_wh=r.energy_wh, car_full=r.car_full)


def _modes(view: ChargerView | None) -> Sequence[str]:
    if view is None:
        return []
    return [view.mode, "override"] if view.override is not None else [view.mode]


def attach(controller: Publisher, store: SessionStore, *, flush_every_s: float = 60.0) -> History:
    """A :class:`History` fed by each state ``controller`` publishes (give it to the RPC
    server for ``getSessions``); the strategies get each charger's past sessions from it."""
    history = History(store, controller, flush_every_s=flush_every_s)
    controller.subscribe(history.on_state)
    controller.use_past_sessions(history.past_sessions)
    return history
