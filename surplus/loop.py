"""The control loop: coordinator -> per-charger control -> one published state per tick.

:class:`Controller` is the facade the rest of the code uses (it implements
:class:`surplus.api.ControllerAPI`). It wires three parts, along Home Assistant's
``DataUpdateCoordinator`` line:

- :class:`surplus.coordinator.Coordinator` reads the chargers and meters on their
  own cadences into the tick's snapshot;
- :class:`surplus.site.Site` shares the surplus and the circuits' headroom among
  the chargers;
- one :class:`surplus.control.ChargerControl` per charger runs strategy ->
  override -> governor -> write (everything that reaches a charger passes
  :class:`surplus.governor.SafetyGovernor`; a failing plugin falls back to the
  configured safe decision).

After every tick the controller publishes one frozen :class:`surplus.state.LoopState`
(snapshot, and per charger mode, override and last decision) on its
:class:`surplus.state.StateBoard`; readers (RPC, metrics, MQTT, history) read that
and nothing else. The heartbeat is not the loop's business: the bus keeps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType

from .api import ChargerSetup, Line, LineStatus, PluginInfo
from .circuits import CircuitTree, Load
from .clock import Clock
from .control import ChargerControl, DecisionObserver, combine_override, merge_override
from .coordinator import Coordinator, implausible, plausible_meter_w
from .governor import SafetyGovernor
from .meter import Meter
from .site import SHARING_MODES, Site
from .slot import ChargerSlot
from .state import DecisionRecord, LoopState, Override, StateBoard, StateListener, TickStats
from .strategy import PastSession, StrategyInfo
from .types import MeterReading, Snapshot, Verdict

log = logging.getLogger("surplus.loop")

__all__ = [
    "SHARING_MODES",
    "ChargerSlot",
    "Controller",
    "DecisionObserver",
    "TickObserver",
    "combine_override",
    "implausible",
    "merge_override",
    "plausible_meter_w",
]

#: Observer called with the new snapshot after every tick; keep it cheap.
TickObserver = Callable[[Snapshot], None]


class Controller:
    """Runs the tick for a list of chargers; implements :class:`surplus.api.ControllerAPI`."""

    def __init__(
        self,
        *,
        clock: Clock,
        chargers: Sequence[ChargerSlot],
        meters: Sequence[Meter],
        governor: SafetyGovernor,
        tick_s: float = 1.0,
        stale_after_s: float = 10.0,
        full_read_every_s: float = 60.0,
        meter_timeout_s: float = 3.0,
        meter_max_w: float = float("inf"),
        plugins: Sequence[PluginInfo] = (),
        strategy_infos: Mapping[str, StrategyInfo] | None = None,
        observers: Sequence[DecisionObserver] = (),
        circuits: CircuitTree | None = None,
        lines: Mapping[str, Line] | None = None,
        board: StateBoard | None = None,
        circuit_only_meters: Collection[str] = (),
    ) -> None:
        if not chargers:
            raise ValueError("a controller needs at least one charger")
        self.clock = clock
        self.started_at_s = clock.now()
        self._slots = {s.charger_id: s for s in chargers}
        self._lines = dict(lines or {})
        self._governor = governor
        self._tick_s = tick_s
        self._plugins = tuple(plugins)
        if strategy_infos is None:  # built without a plugin manager (tests): the built-ins' word
            from .plugins import builtin_strategy_infos

            strategy_infos = builtin_strategy_infos()
        #: Modes = the loaded strategies, in load order; those that need the grid meter.
        self._modes = tuple(dict.fromkeys(name for s in self._slots.values() for name in s.strategies))
        meter_modes = frozenset(n for n, info in strategy_infos.items() if info.needs_meter)
        self._reading_meter = frozenset(
            n for n, info in strategy_infos.items() if info.uses_meter or info.needs_meter
        )
        self._observers = list(observers)
        #: Where each tick's frozen state is published (readers hold the board, not the loop).
        self.board = board if board is not None else StateBoard()
        self.coordinator = Coordinator(
            clock=clock,
            slots=self._slots,
            meters=meters,
            governor=governor,
            tick_s=tick_s,
            stale_after_s=stale_after_s,
            full_read_every_s=full_read_every_s,
            meter_timeout_s=meter_timeout_s,
            meter_max_w=meter_max_w,
            circuit_only_meters=circuit_only_meters,
        )
        self.site = Site(slots=self._slots, governor=governor, circuits=circuits, stale_after_s=stale_after_s)
        self.site.set_snapshot(self.coordinator.snapshot)
        self._controls = {
            cid: ChargerControl(
                slot,
                clock=clock,
                governor=governor,
                site=self.site,
                has_meters=bool(meters),
                meter_modes=meter_modes,
                observers=self._observers,
            )
            for cid, slot in self._slots.items()
        }
        self._stopping = asyncio.Event()
        self._hurry = False
        self.ticks = 0
        #: How long the last tick took on the clock (reads, decisions, writes); None before the first.
        self.last_tick_s: float | None = None
        self._publish(notify=False)

    # -- ControllerAPI: reads come from the published state -------------------
    def published(self) -> LoopState:
        state = self.board.latest
        assert state is not None  # published once in __init__
        return state

    @property
    def charger_ids(self) -> Sequence[str]:
        return tuple(self._slots)

    def snapshot(self) -> Snapshot:
        return self.published().snapshot

    def get_mode(self, charger_id: str) -> str:
        return self.published().charger(charger_id).mode

    def get_override(self, charger_id: str) -> Override | None:
        return self.published().charger(charger_id).override

    def last_decision(self, charger_id: str) -> DecisionRecord | None:
        return self.published().charger(charger_id).decision

    def meters(self) -> Mapping[str, MeterReading]:
        return self.published().snapshot.meters

    @property
    def available_modes(self) -> Sequence[str]:
        return self._modes

    @property
    def modes_reading_meter(self) -> frozenset[str]:
        return self._reading_meter

    def lines(self) -> Mapping[str, LineStatus]:
        return {lid: LineStatus.of(line) for lid, line in self._lines.items()}

    @property
    def circuits(self) -> CircuitTree | None:
        """The shared fuses (None: each charger has only its own limits)."""
        return self.site.circuits

    def charger_setup(self, charger_id: str) -> ChargerSetup:
        slot = self._control(charger_id).slot
        tree = self.site.circuits
        path = () if tree is None else tuple(c.id for c in tree.path(charger_id))
        return ChargerSetup(charger_id=charger_id, circuits=path, priority=slot.priority)

    def circuit_loads(self, snapshot: Snapshot | None = None) -> dict[str, Load]:
        """Every charger's counted load on the grid's phases (see :mod:`surplus.circuits`)."""
        return self.site.circuit_loads(snapshot or self.coordinator.snapshot)

    def plugins(self) -> Sequence[PluginInfo]:
        return self._plugins

    # -- ControllerAPI: a person's writes (published at once) -----------------
    def set_mode(self, charger_id: str, mode: str) -> None:
        self._control(charger_id).set_mode(mode)
        self._publish(notify=False)

    async def set_override(self, charger_id: str, override: Override) -> Verdict:
        control = self._control(charger_id)
        verdict = await control.set_override(override, lambda: self.coordinator.snapshot)
        self._publish(notify=False)
        return verdict

    def clear_override(self, charger_id: str) -> bool:
        had = self._control(charger_id).clear_override()
        self._publish(notify=False)
        return had

    # -- listeners ------------------------------------------------------------
    def add_observer(self, observer: DecisionObserver) -> None:
        """Also call ``observer`` after every governed decision (e.g. logging, plugins)."""
        self._observers.append(observer)

    def subscribe(self, listener: StateListener) -> None:
        """Also call ``listener`` with each tick's published state (e.g. the session history)."""
        self.board.subscribe(listener)

    def use_past_sessions(self, past: Callable[[str], tuple[PastSession, ...]]) -> None:
        """Hand each charger's strategy its past sessions from ``past`` (the session history)."""
        self.site.past_sessions = past

    def add_tick_observer(self, observer: TickObserver) -> None:
        """Also call ``observer`` with the new snapshot after every tick."""
        self.board.subscribe(lambda state: observer(state.snapshot))

    # -- running --------------------------------------------------------------
    def _control(self, charger_id: str) -> ChargerControl:
        try:
            return self._controls[charger_id]
        except KeyError:
            raise ValueError(f"unknown charger {charger_id!r}") from None

    def _publish(self, *, notify: bool = True) -> None:
        """Publish the frozen state; ``notify`` (once per tick) also tells the listeners."""
        state = LoopState(
            snapshot=self.coordinator.snapshot,
            chargers=MappingProxyType({cid: slot.view() for cid, slot in self._slots.items()}),
            loop=TickStats(ticks=self.ticks, last_tick_s=self.last_tick_s),
        )
        self.board.publish(state, notify=notify)

    async def start(self) -> None:
        """Start meters and chargers (see :meth:`surplus.coordinator.Coordinator.start`)."""
        await self.coordinator.start()

    async def run(self, *, duration_s: float | None = None) -> None:
        """Tick until :meth:`stop` (or ``duration_s``), then shut down safely."""
        await self.start()
        end = None if duration_s is None else self.clock.now() + duration_s
        failing = False
        try:
            while not self._stopping.is_set():
                started = self.clock.now()
                try:
                    await self.tick()
                except Exception:  # a bug in one tick must not end the controller
                    if not failing:  # the traceback once per streak, not every second
                        log.exception("tick failed; trying again every tick")
                    failing = True
                else:
                    if failing:
                        log.info("ticks work again")
                    failing = False
                if end is not None and self.clock.now() >= end:
                    break
                # Sleep in one piece: stop() is noticed at the next tick (at most tick_s later),
                # which keeps the tick cheap enough to replay days on a fake clock.
                await self.clock.sleep(max(0.0, started + self._tick_s - self.clock.now()))
        finally:
            await self.shutdown()

    def stop(self, *, hurry: bool = False) -> None:
        """Ask :meth:`run` to finish its tick and shut down (safe from signal handlers).

        ``hurry`` skips waiting out a spacing rule for the safe state (a second
        Ctrl-C); the charger then falls back on its own when the heartbeat stops.
        """
        self._hurry = self._hurry or hurry
        self._stopping.set()

    async def tick(self) -> Snapshot:
        """One pass: read everything, decide, govern, write; then publish the state."""
        now = self.clock.now()
        snapshot = await self.coordinator.refresh()
        try:
            self.site.begin_tick(snapshot)
            # Nothing can be sent to a charger we never reached.
            started = [control for control in self._controls.values() if control.slot.started]
            if self.site.circuits is not None and len(started) > 1:
                await self._govern_freeing_first(started, snapshot)
            else:
                for control in started:
                    async with control.slot.lock:
                        await control.govern(snapshot, snapshot.at_s)
        finally:
            self.site.end_tick()
        self.ticks += 1
        self.last_tick_s = self.clock.now() - now
        self._publish()
        return snapshot

    async def _govern_freeing_first(self, controls: Sequence[ChargerControl], snapshot: Snapshot) -> None:
        """Several chargers under circuits: those that give current back are written first.

        Every strategy decides first; then pauses and decreases (which free circuit
        headroom) are governed and written before the rest, so a raise in the same tick
        can use what they free, and where a circuit became too tight (its other loads rose)
        the boxes the surplus sharing gave least give way first.
        """
        now = snapshot.at_s
        decided = []
        for control in controls:
            async with control.slot.lock:
                decision, name = control.decide(snapshot, now)
            decided.append(
                (
                    not control.frees_room(decision),
                    self.site.granted(control.slot.charger_id),
                    control,
                    decision,
                    name,
                )
            )
        decided.sort(key=lambda d: (d[0], d[1]))
        for _, _, control, decision, name in decided:
            async with control.slot.lock, self.site.circuit_lock:
                await control.apply(snapshot, now, decision, name)

    async def shutdown(self) -> None:
        """Leave each charger in its safe state, then stop heartbeats (last), then meters."""
        for control in self._controls.values():
            slot = control.slot
            if slot.started:
                async with slot.lock:
                    await control.leave_safe(self.coordinator.snapshot, lambda: self._hurry)
        await self.coordinator.close()
