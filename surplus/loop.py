"""The control loop: tick -> snapshot -> strategy -> governor -> driver.

One :class:`Controller` runs any number of chargers, each with its own mode
(strategy) and optional override. Everything that reaches a charger passes
:class:`surplus.governor.SafetyGovernor`; a failing plugin is logged and
isolated, and its charger falls back to the configured safe decision. The
heartbeat is not the loop's business: the bus keeps it on its own schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .api import ChargerSetup, DecisionRecord, Line, LineStatus, Override, PluginInfo, SessionHistory
from .chargers.base import Charger
from .circuits import CircuitTree, Load, LoadBook, Room, counted_load
from .clock import Clock
from .governor import SAME_CURRENT_A, GovernorMemory, SafetyGovernor
from .meter import Meter
from .modbus import registers as R
from .options import did_you_mean
from .sharing import CircuitRoom, Sharer, split_surplus
from .strategy import Strategy, StrategyContext, StrategyInfo, SurplusShare
from .types import (
    MIN_CURRENT_A,
    ChargerReading,
    ChargerState,
    Decision,
    MeterReading,
    Outcome,
    Snapshot,
    Source,
    Verdict,
)

log = logging.getLogger("surplus.loop")

#: Modes whose strategies share one surplus when several chargers run them (they read
#: ``StrategyContext.surplus_share``); a box in another mode is part of the house load.
SHARING_MODES = frozenset({"pv", "minpv"})

#: Observer called after every governed decision (logging, metrics, plugins).
DecisionObserver = Callable[[DecisionRecord, str], None]
#: Observer called with the new snapshot after every tick (session history); keep it cheap.
TickObserver = Callable[[Snapshot], None]


@dataclass(slots=True)
class ChargerSlot:
    """One charger and everything the loop keeps for it."""

    charger: Charger
    #: Strategy instances by mode name ("fixed", "pv", ...); "off" pauses.
    strategies: Mapping[str, Strategy]
    mode: str
    #: "hold_min" or "pause": what to do when the strategy or the data fails.
    fallback: str = "pause"
    #: Sharing the surplus with other chargers: a higher number is served first.
    priority: int = 1
    reading: ChargerReading | None = None
    override: Override | None = None
    last_record: DecisionRecord | None = None
    last_full_read_s: float = -math.inf
    started: bool = False
    #: Set while the strategy keeps failing, so the failure is logged once.
    strategy_error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def charger_id(self) -> str:
        return self.charger.charger_id


def _why(slot: ChargerSlot, exc: BaseException) -> str:
    """The error text without a repeated "<charger id>: " prefix (driver errors carry it)."""
    text = str(exc)
    prefix = f"{slot.charger_id}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def merge_override(decision: Decision, override: Override | None) -> Decision:
    """Lay a person's override over the strategy's decision."""
    if override is None:
        return decision
    charge = override.charge
    if charge is None and override.current_a is not None:
        charge = True
    parts = {
        name
        for name, value in (("charge", charge), ("phases", override.phases), ("lock", override.lock))
        if value is not None
    }
    # A phases- or lock-only override leaves starting and stopping to the strategy, and
    # with it the rules that bind strategies (5 minutes between a pause and a resume).
    reason = override.reason if "charge" in parts else f"{override.reason}; {decision.reason}"
    return dataclasses.replace(
        decision,
        source=Source.OVERRIDE,
        charge=decision.charge if charge is None else charge,
        current_a=decision.current_a if override.current_a is None else override.current_a,
        phases=decision.phases if override.phases is None else override.phases,
        lock=decision.lock if override.lock is None else override.lock,
        pause_kind=decision.pause_kind if override.pause_kind is None else override.pause_kind,
        reason=reason,
        person_parts=frozenset(parts),
    )


def combine_override(old: Override | None, new: Override) -> Override:
    """A new override replaces the fields it sets and keeps the others."""
    if old is None:
        return new
    changes = {
        f.name: getattr(new, f.name) for f in dataclasses.fields(new) if getattr(new, f.name) is not None
    }
    return dataclasses.replace(old, **changes)


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
        meter_max_w: float = math.inf,
        plugins: Sequence[PluginInfo] = (),
        strategy_infos: Mapping[str, StrategyInfo] | None = None,
        observers: Sequence[DecisionObserver] = (),
        circuits: CircuitTree | None = None,
        lines: Mapping[str, Line] | None = None,
    ) -> None:
        if not chargers:
            raise ValueError("a controller needs at least one charger")
        #: The shared fuses (None: each charger has only its own limits).
        self.circuits = circuits
        self._lines = dict(lines or {})
        #: Held from computing a charger's headroom until its write is done, so two
        #: chargers (a tick and an RPC call) never both fill the same headroom.
        self._circuit_lock = asyncio.Lock()
        #: During a tick's decisions: every charger's counted load, updated after each write.
        self._book: LoadBook | None = None
        self.clock = clock
        self.started_at_s = clock.now()
        self._slots = {s.charger_id: s for s in chargers}
        self._meters = list(meters)
        self._governor = governor
        self._tick_s = tick_s
        self._stale_after_s = stale_after_s
        self._full_read_every_s = full_read_every_s
        self._meter_timeout_s = meter_timeout_s
        #: A reading whose powers exceed this (W, either sign) is implausible: a failed read.
        self._meter_max_w = meter_max_w
        self._plugins = tuple(plugins)
        if strategy_infos is None:  # built without a plugin manager (tests): the built-ins' word
            from .plugins import builtin_strategy_infos

            strategy_infos = builtin_strategy_infos()
        #: Modes = the loaded strategies, in load order; those that need the grid meter.
        self._modes = tuple(dict.fromkeys(name for s in self._slots.values() for name in s.strategies))
        self._meter_modes = frozenset(n for n, info in strategy_infos.items() if info.needs_meter)
        self._observers = list(observers)
        self._tick_observers: list[TickObserver] = []
        #: Tick observers whose last call failed (their traceback is logged once per streak).
        self._failing_tick_observers: set[int] = set()
        #: The session history when one is configured (``getSessions`` reads it).
        self.history: SessionHistory | None = None
        self._meter_readings: dict[str, MeterReading] = {}
        self._meter_errors: dict[str, str] = {}
        #: One reading task per meter with I/O, from start() to shutdown().
        self._meter_tasks: list[asyncio.Future[None]] = []
        self._snapshot = Snapshot(at_s=clock.now())
        #: This tick's split of the surplus (empty unless several chargers share it).
        self._shares: dict[str, SurplusShare] = {}
        self._stopping = asyncio.Event()
        self._hurry = False
        self.ticks = 0
        #: How long the last tick took on the clock (reads, decisions, writes); None before the first.
        self.last_tick_s: float | None = None

    # -- ControllerAPI -----------------------------------------------------
    @property
    def charger_ids(self) -> Sequence[str]:
        return tuple(self._slots)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def get_mode(self, charger_id: str) -> str:
        return self._slot(charger_id).mode

    @property
    def available_modes(self) -> Sequence[str]:
        return self._modes

    def lines(self) -> Mapping[str, LineStatus]:
        return {lid: LineStatus.of(line) for lid, line in self._lines.items()}

    def charger_setup(self, charger_id: str) -> ChargerSetup:
        slot = self._slot(charger_id)
        path = () if self.circuits is None else tuple(c.id for c in self.circuits.path(charger_id))
        return ChargerSetup(charger_id=charger_id, circuits=path, priority=slot.priority)

    def set_mode(self, charger_id: str, mode: str) -> None:
        slot = self._slot(charger_id)
        if mode not in slot.strategies:
            raise ValueError(
                f"unknown mode {mode!r}{did_you_mean(mode, slot.strategies)}; "
                f"modes are {', '.join(slot.strategies)}"
            )
        if mode != slot.mode:
            log.info("%s: mode %s -> %s", charger_id, slot.mode, mode)
            slot.mode = mode
        if slot.override is not None:
            # Choosing a mode means "let this mode decide": an older override would mask it.
            slot.override = None
            log.info("%s: override cleared by setting mode %s", charger_id, mode)

    async def set_override(self, charger_id: str, override: Override) -> Verdict:
        slot = self._slot(charger_id)
        if not slot.started:
            reading = self._snapshot.chargers.get(charger_id)
            why = reading.error if reading is not None and reading.error else "no connection yet"
            return Verdict(
                outcome=Outcome.REFUSED, reasons=(f"charger {charger_id} is not connected: {why}",)
            )
        async with slot.lock:
            previous = slot.override
            slot.override = combine_override(previous, override)
            verdict = await self._govern(slot, self._snapshot, self.clock.now())
            if verdict.outcome is Outcome.REFUSED:
                slot.override = previous  # a refused request changes nothing
            return verdict

    def clear_override(self, charger_id: str) -> bool:
        slot = self._slot(charger_id)
        had = slot.override is not None
        slot.override = None
        if had:
            log.info("%s: override cleared; strategy %s resumes", charger_id, slot.mode)
        return had

    def get_override(self, charger_id: str) -> Override | None:
        return self._slot(charger_id).override

    def last_decision(self, charger_id: str) -> DecisionRecord | None:
        return self._slot(charger_id).last_record

    def meters(self) -> Mapping[str, MeterReading]:
        return self._snapshot.meters

    def plugins(self) -> Sequence[PluginInfo]:
        return self._plugins

    def add_observer(self, observer: DecisionObserver) -> None:
        """Also call ``observer`` after every governed decision (e.g. /metrics counting verdicts)."""
        self._observers.append(observer)

    def add_tick_observer(self, observer: TickObserver) -> None:
        """Also call ``observer`` with the new snapshot after every tick (e.g. the session history)."""
        self._tick_observers.append(observer)

    # -- running -----------------------------------------------------------
    def _slot(self, charger_id: str) -> ChargerSlot:
        try:
            return self._slots[charger_id]
        except KeyError:
            raise ValueError(f"unknown charger {charger_id!r}") from None

    async def start(self) -> None:
        """Start meters and chargers; a charger that does not answer is retried on every tick.

        Meters that do I/O are then read on their own cadence (every ``tick_s``) by
        one task each: a tick takes their latest reading and its age and never waits
        for a meter, so a meter that hangs cannot slow the charger's control. The
        first round is read here (bounded by ``meter_timeout_s``), so the first tick
        has readings.
        """
        for meter in self._meters:
            try:
                await meter.start()
            except Exception as exc:  # a broken meter must not stop the loop
                log.error("meter %s failed to start: %s", meter.meter_id, _meter_why(meter.meter_id, exc))
        if len(self._slots) == 1:
            for slot in self._slots.values():
                await self._start_charger(slot)
        else:  # the lines in parallel (see tick)
            await asyncio.gather(*(self._start_charger(slot) for slot in self._slots.values()))
        polled = [m for m in self._meters if not getattr(m, "instant", False)]
        if polled:
            await asyncio.gather(*(self._read_meter(m) for m in polled))
            self._meter_tasks = [asyncio.ensure_future(self._meter_cadence(m)) for m in polled]

    async def _meter_cadence(self, meter: Meter) -> None:
        """Read ``meter`` every ``tick_s`` (a read that overruns starts the next one at once)."""
        next_at = self.clock.now()
        while True:
            next_at = max(next_at + self._tick_s, self.clock.now())
            await self.clock.sleep(next_at - self.clock.now())
            await self._read_meter(meter)

    async def _read_meter(self, meter: Meter) -> None:
        """One read, abandoned after ``meter_timeout_s`` (a failure); the result is stored."""
        read = asyncio.ensure_future(meter.read())
        deadline = self.clock.timer(self._meter_timeout_s)
        try:
            await asyncio.wait((read, deadline), return_when=asyncio.FIRST_COMPLETED)
        finally:  # a cancelled cadence leaves no read behind
            deadline.cancel()
            if not read.done():
                read.cancel()
        if not read.done():
            self._store_meter(meter, TimeoutError(f"no answer within {self._meter_timeout_s:g} s"))
        elif read.cancelled():
            self._store_meter(meter, asyncio.CancelledError("read cancelled"))
        else:
            self._store_meter(meter, read.exception() or read.result())

    async def _start_charger(self, slot: ChargerSlot) -> None:
        try:
            await slot.charger.start()
        except Exception as exc:
            if slot.reading is None or slot.reading.error != str(exc):
                log.error("%s: cannot start charger: %s (retrying)", slot.charger_id, _why(slot, exc))
            slot.reading = ChargerReading(charger_id=slot.charger_id, state=None, error=str(exc))
            return
        slot.started = True
        self._governor.reached(slot.charger_id)

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
                await self._sleep_until(started + self._tick_s)
        finally:
            await self.shutdown()

    async def _sleep_until(self, deadline: float) -> None:
        # Sleep in one piece: stop() is noticed at the next tick (at most tick_s later),
        # which keeps the tick cheap enough to replay days on a fake clock.
        await self.clock.sleep(max(0.0, deadline - self.clock.now()))

    def stop(self, *, hurry: bool = False) -> None:
        """Ask :meth:`run` to finish its tick and shut down (safe from signal handlers).

        ``hurry`` skips waiting out a spacing rule for the safe state (a second
        Ctrl-C); the charger then falls back on its own when the heartbeat stops.
        """
        self._hurry = self._hurry or hurry
        self._stopping.set()

    async def tick(self) -> Snapshot:
        """One pass: read everything, decide, govern, write."""
        now = self.clock.now()
        if len(self._slots) == 1:
            for slot in self._slots.values():
                await self._read_charger(slot, now)
        else:
            # All at once: each line's bus owner queues its own boxes' reads in this order,
            # so the lines (buses) are read in parallel, each one box after another.
            await asyncio.gather(*(self._read_charger(slot, now) for slot in self._slots.values()))
        # Meters with I/O are read by their own tasks (see start); one that does no I/O
        # (``instant``, e.g. a simulated one) is read in place.
        for meter in self._meters:
            if getattr(meter, "instant", False):
                try:
                    self._store_meter(meter, await meter.read())
                except Exception as exc:
                    self._store_meter(meter, exc)
        snapshot = self._build_snapshot(self.clock.now())
        self._snapshot = snapshot
        if self.circuits is not None:
            self._book = LoadBook(self.circuits, self.circuit_loads(snapshot))
        try:
            self._shares = self._share_surplus(snapshot)
            for slot in self._slots.values():
                if slot.started:  # nothing can be sent to a charger we never reached
                    async with slot.lock:
                        await self._govern(slot, snapshot, snapshot.at_s)
        finally:
            self._book = None
        self.ticks += 1
        self.last_tick_s = self.clock.now() - now
        self._notify_tick(snapshot)
        return snapshot

    def _notify_tick(self, snapshot: Snapshot) -> None:
        """Call the tick observers; a failing one is logged once per failure streak, never fatal."""
        for i, observer in enumerate(self._tick_observers):
            try:
                observer(snapshot)
            except Exception:
                if i not in self._failing_tick_observers:
                    log.exception("tick observer failed (logged once until it works again)")
                    self._failing_tick_observers.add(i)
            else:
                if i in self._failing_tick_observers:
                    log.info("tick observer works again")
                    self._failing_tick_observers.discard(i)

    async def _read_charger(self, slot: ChargerSlot, now: float) -> None:
        if not slot.started:
            await self._start_charger(slot)
            if not slot.started:
                return
        full = now - slot.last_full_read_s >= self._full_read_every_s
        previous = slot.reading.state if slot.reading else None
        try:
            state = await slot.charger.read_state(full=full)
        except Exception as exc:
            if slot.reading is None or slot.reading.error is None:
                log.warning("%s: read failed: %s", slot.charger_id, _why(slot, exc))
            slot.reading = ChargerReading(charger_id=slot.charger_id, state=previous, error=str(exc))
            return
        if full:
            if slot.last_full_read_s == -math.inf:
                # The first full read: the next ones are spread over the interval (the i-th of n
                # chargers 1/n of it later), so many boxes on a line never all read in one tick.
                index = list(self._slots).index(slot.charger_id)
                slot.last_full_read_s = now - self._full_read_every_s * index / len(self._slots)
            else:
                slot.last_full_read_s = now
        if slot.reading is not None and slot.reading.error is not None:
            log.info("%s: reads work again", slot.charger_id)
        self._log_charger_error(slot.charger_id, previous, state)
        slot.reading = ChargerReading(charger_id=slot.charger_id, state=state, connected=True)

    @staticmethod
    def _log_charger_error(charger_id: str, before: ChargerState | None, now: ChargerState) -> None:
        """One line when the box enters an error and one when it leaves it."""
        was = before is not None and before.has_error
        if now.has_error and (not was or before is None or before.error_code != now.error_code):
            text = R.ACTIVE_ERROR_CODE.text(now.error_code)
            lost = ", master-lost fallback active" if now.master_lost_fallback else ""
            log.warning("%s: charger reports error %d (%s)%s", charger_id, now.error_code, text, lost)
        elif was and not now.has_error:
            log.info("%s: charger error cleared", charger_id)

    def _store_meter(self, meter: Meter, result: object) -> None:
        """Keep a reading; a failure keeps the last value, marked, so its age keeps growing."""
        mid = meter.meter_id
        if not isinstance(result, (MeterReading, BaseException)):  # a plugin breaking its contract
            result = TypeError(f"returned {type(result).__name__} instead of a MeterReading")
        if isinstance(result, MeterReading):
            why_not = implausible(result, self._meter_max_w)
            if why_not is not None:
                result = ValueError(why_not)
        if isinstance(result, MeterReading):
            if self._meter_errors.pop(mid, None) is not None:
                log.info("meter %s: reads work again", mid)
            self._meter_readings[mid] = result
            return
        why = _meter_why(mid, result)
        if mid not in self._meter_errors:  # once per failure streak
            log.warning("meter %s: read failed: %s", mid, why)
        self._meter_errors[mid] = why
        old = self._meter_readings.get(mid)
        if old is None:  # never read: still listed (getMeters, /metrics) with why, no numbers
            old = MeterReading(meter_id=mid, read_at_s=-math.inf, grid_power_w=math.nan)
        self._meter_readings[mid] = dataclasses.replace(old, error=why)

    def _build_snapshot(self, now: float) -> Snapshot:
        chargers = {}
        for cid, slot in self._slots.items():
            r = slot.reading or ChargerReading(charger_id=cid, state=None)
            age = now - r.state.read_at_s if r.state is not None else math.inf
            # Built directly rather than with dataclasses.replace: this runs every tick.
            chargers[cid] = ChargerReading(
                charger_id=cid, state=r.state, age_s=age, connected=r.connected, error=r.error
            )
        meters = {}
        for mid, m in self._meter_readings.items():
            age = now - m.read_at_s
            stale = m.error or (f"stale ({age:.0f} s old)" if age > self._stale_after_s else None)
            # Built directly rather than with dataclasses.replace: this runs every tick.
            meters[mid] = MeterReading(
                meter_id=m.meter_id,
                read_at_s=m.read_at_s,
                grid_power_w=m.grid_power_w,
                pv_power_w=m.pv_power_w,
                house_power_w=m.house_power_w,
                battery_power_w=m.battery_power_w,
                battery_soc_pct=m.battery_soc_pct,
                age_s=age,
                error=stale,
            )
        return Snapshot(at_s=now, chargers=MappingProxyType(chargers), meters=MappingProxyType(meters))

    def _strategy_decision(self, slot: ChargerSlot, snapshot: Snapshot, now: float) -> tuple[Decision, str]:
        """Ask the mode's strategy; any failure becomes the configured fallback."""
        reading = snapshot.chargers[slot.charger_id]
        strategy = slot.strategies.get(slot.mode)
        problem: str | None = None
        if strategy is None:
            problem = f"no strategy for mode {slot.mode!r}"
        elif reading.state is None:
            problem = f"charger not readable ({reading.error or 'no data yet'})"
        elif self._meters and snapshot.grid_power_w is None and slot.mode not in ("off", "fixed"):
            problem = "no fresh grid-meter reading"
        elif not self._meters and slot.mode in self._meter_modes:
            problem = f"mode {slot.mode} needs a grid meter and none is configured"
        if problem is None and strategy is not None and reading.state is not None:
            caps = reading.state.capabilities
            limits = self._governor.limits(slot.charger_id)
            ceiling_a = self._governor.ceiling_a(reading)
            room = self._room(slot.charger_id, snapshot, self._present_phases(slot.charger_id, reading))
            if room is not None:
                ceiling_a = min(ceiling_a, max(room.amps, 0.0))
            ctx = StrategyContext(
                charger_id=slot.charger_id,
                now_s=now,
                wall_s=self.clock.wall(),
                min_current_a=MIN_CURRENT_A,
                # Device, cable, fuse and circuit limits: what the governor would let through.
                max_current_a=ceiling_a,
                phases_switchable=caps.phase_switching,
                phase_switch_at_s=self._governor.phase_switch_at_s(slot.charger_id),
                resume_at_s=self._governor.resume_at_s(slot.charger_id),
                phase_switch_interval_s=limits.phase_switch_interval_s if limits else 300.0,
                surplus_share=self._shares.get(slot.charger_id) if slot.override is None else None,
            )
            try:
                decision = strategy.decide(snapshot, ctx)
                if decision.charger_id != slot.charger_id:
                    raise ValueError(f"decision for {decision.charger_id!r}, expected {slot.charger_id!r}")
            except Exception as exc:
                problem = f"strategy {slot.mode} failed: {exc}"
                if slot.strategy_error is None:  # one line per failure streak; the traceback for debugging
                    log.error("%s: %s; falling back to %s", slot.charger_id, problem, slot.fallback)
                    log.debug("%s: strategy %s traceback", slot.charger_id, slot.mode, exc_info=True)
                slot.strategy_error = problem
            else:
                if slot.strategy_error is not None:
                    log.info("%s: strategy %s works again", slot.charger_id, slot.mode)
                    slot.strategy_error = None
                return decision, slot.mode
        return self._fallback(slot, problem or "fallback"), "fallback"

    def _fallback(self, slot: ChargerSlot, why: str) -> Decision:
        if slot.fallback == "hold_min":
            return Decision(
                charger_id=slot.charger_id,
                source=Source.FALLBACK,
                charge=True,
                current_a=MIN_CURRENT_A,
                reason=f"fallback hold minimum: {why}",
            )
        return Decision(
            charger_id=slot.charger_id, source=Source.FALLBACK, charge=False, reason=f"fallback pause: {why}"
        )

    async def _govern(self, slot: ChargerSlot, snapshot: Snapshot, now: float) -> Verdict:
        """Decide for one charger, pass the governor, execute what it allows. Caller holds slot.lock."""
        if self.circuits is None:
            return await self._govern_one(slot, snapshot, now)
        async with self._circuit_lock:
            return await self._govern_one(slot, snapshot, now)

    # -- sharing the surplus ---------------------------------------------------
    def _share_surplus(self, snapshot: Snapshot) -> dict[str, SurplusShare]:
        """Who shares the surplus this tick, and how (see :mod:`surplus.sharing`).

        Chargers in a sharing mode, reached, read, and not overridden by a person take
        part; with fewer than two nobody shares (one charger decides exactly as alone).
        """
        now = snapshot.at_s
        tree = self.circuits
        sharers: list[Sharer] = []
        power: dict[str, float] = {}
        for slot in self._slots.values():
            reading = snapshot.chargers[slot.charger_id]
            state = reading.state
            if (
                not slot.started
                or slot.mode not in SHARING_MODES
                or slot.override is not None
                or state is None
            ):
                continue
            cid = slot.charger_id
            phases = self._present_phases(cid, reading)
            if state.capabilities.grid_phases == 1:
                phases = 1
            ceiling = self._governor.ceiling_a(reading)  # the circuits: CircuitRoom below
            sent = self._governor.memory(cid).charging
            charging = sent if sent is not None else state.charging
            volts = [v for v in (state.voltage_l1_v, state.voltage_l2_v, state.voltage_l3_v)[:phases]]
            line_v = sum(volts) / len(volts) if volts and all(180.0 <= v <= 260.0 for v in volts) else 230.0
            sharers.append(
                Sharer(
                    charger_id=cid,
                    priority=slot.priority,
                    phases=phases,
                    volts=line_v,
                    max_a=ceiling,
                    grid_phases=tree.grid_phases(cid, phases) if tree is not None else (0, 1, 2)[:phases],
                    charging=charging,
                    can_start=charging or self._governor.resume_at_s(cid) <= now,
                )
            )
            power[cid] = state.power_total_w if math.isfinite(state.power_total_w) else 0.0
        if len(sharers) < 2:
            return {}
        total_w = sum(power.values())
        frozen = tuple(sharers)
        rooms = tuple(self._circuit_rooms(snapshot, frozenset(power)))

        def splitter(cid: str) -> Callable[[float], tuple[float, str]]:
            def split(surplus_w: float) -> tuple[float, str]:
                share = split_surplus(surplus_w, frozen, rooms)[cid]
                return share.budget_w, share.why

            return split

        return {
            s.charger_id: SurplusShare(
                others_power_w=total_w - power[s.charger_id], split=splitter(s.charger_id)
            )
            for s in sharers
        }

    def _circuit_rooms(self, snapshot: Snapshot, sharing: frozenset[str]) -> list[CircuitRoom]:
        """Each circuit above a sharing charger: its limit less what the others beneath draw."""
        tree = self.circuits
        if tree is None:
            return []
        loads = self._book.loads if self._book is not None else self.circuit_loads(snapshot)
        rooms = []
        for circuit in tree.circuits.values():
            members = tree.members(circuit.id)
            sharers = frozenset(m for m in members if m in sharing)
            if not sharers:
                continue
            others = [loads[m] for m in members if m not in sharing and m in loads]
            room = tuple(circuit.limit_a - sum(load[g] for load in others) for g in range(3))
            rooms.append(CircuitRoom(id=circuit.id, room_a=(room[0], room[1], room[2]), members=sharers))
        return rooms

    # -- circuits ----------------------------------------------------------
    def _present_phases(self, charger_id: str, reading: ChargerReading) -> int:
        """The phases the box is set to now: what was sent, else its readback; 3 when unknown."""
        sent = self._governor.memory(charger_id).phases
        if sent is not None:
            return sent
        if reading.state is not None and reading.state.requested_phases == 1:
            return 1
        return 3

    def circuit_loads(self, snapshot: Snapshot | None = None) -> dict[str, Load]:
        """Every charger's counted load on the grid's phases (see :mod:`surplus.circuits`)."""
        tree = self.circuits
        if tree is None:
            return {}
        snapshot = snapshot or self._snapshot
        loads: dict[str, Load] = {}
        for cid in self._slots:
            reading = snapshot.chargers.get(cid) or ChargerReading(charger_id=cid, state=None)
            limits = self._governor.limits(cid)
            if limits is None:  # pragma: no cover - every slot has limits
                continue
            box, _ = counted_load(reading, self._governor.memory(cid), limits)
            loads[cid] = tree.grid_load(cid, box)
        return loads

    def _room(self, charger_id: str, snapshot: Snapshot, phases: int) -> Room | None:
        if self.circuits is None:
            return None
        book = self._book
        if book is None or snapshot is not self._snapshot:  # between ticks (an RPC call): afresh
            book = LoadBook(self.circuits, self.circuit_loads(snapshot))
        return book.headroom(charger_id, phases)

    def _update_load(
        self, charger_id: str, reading: ChargerReading, attempted: GovernorMemory | None = None
    ) -> None:
        """After a write: the charger counts at what it was just set to, for those decided after it.

        ``attempted``: the memory of a write that failed, which may have been done in part;
        until the next read shows what happened, the charger counts at the higher of both.
        """
        book, limits = self._book, self._governor.limits(charger_id)
        if book is None or limits is None:
            return
        box, _ = counted_load(reading, self._governor.memory(charger_id), limits)
        if attempted is not None:
            tried, _ = counted_load(reading, attempted, limits)
            box = (max(box[0], tried[0]), max(box[1], tried[1]), max(box[2], tried[2]))
        book.set(charger_id, book.tree.grid_load(charger_id, box))

    def _fit_circuits(
        self, slot: ChargerSlot, decision: Decision, reading: ChargerReading, snapshot: Snapshot
    ) -> tuple[Decision, Room | None]:
        """The decision within the circuits' headroom, and that headroom (None: no circuit).

        A switch to three phases that the circuits cannot carry is dropped (the box stays
        on one); a charge the circuits cannot carry at the minimum becomes a pause -- the
        governor refuses such a charge but never invents the pause.
        """
        if self.circuits is None or not decision.charge:
            return decision, None
        present = self._present_phases(slot.charger_id, reading)
        min_a = MIN_CURRENT_A
        phases = 3 if 3 in (present, decision.phases) else 1
        room = self._room(slot.charger_id, snapshot, phases)
        if room is None:
            return decision, None
        if room.amps < min_a and decision.phases == 3 and present == 1:
            single = self._room(slot.charger_id, snapshot, 1)
            if single is not None and single.amps >= min_a:
                decision = dataclasses.replace(
                    decision, phases=None, reason=f"{decision.reason}; stays on 1 phase ({room.why})"
                )
                room = single
        if room.amps < min_a:
            return (
                dataclasses.replace(
                    decision,
                    charge=False,
                    current_a=None,
                    phases=None,
                    reason=f"{decision.reason}; paused: {room.why}, below {min_a:g} A",
                ),
                room,
            )
        wanted = decision.current_a
        if wanted is not None and wanted >= room.amps - SAME_CURRENT_A:  # the circuit is what binds
            decision = dataclasses.replace(decision, reason=f"{decision.reason}; {room.why}")
        return decision, room

    async def _govern_one(self, slot: ChargerSlot, snapshot: Snapshot, now: float) -> Verdict:
        if slot.override is not None and slot.override.until_s is not None and now >= slot.override.until_s:
            log.info("%s: override expired; strategy %s resumes", slot.charger_id, slot.mode)
            slot.override = None
        decision, strategy_name = self._strategy_decision(slot, snapshot, now)
        if decision.source is not Source.FALLBACK:
            decision = merge_override(decision, slot.override)
        reading = snapshot.chargers[slot.charger_id]
        if now != snapshot.at_s:  # an RPC call between ticks: age the reading to now
            age = now - reading.state.read_at_s if reading.state else math.inf
            reading = dataclasses.replace(reading, age_s=age)
        decision, room = self._fit_circuits(slot, decision, reading, snapshot)
        judgement = self._governor.judge(
            decision, reading, now, shared_headroom_a=None if room is None else room.amps
        )
        verdict = judgement.verdict
        if verdict.command is not None and verdict.outcome is Outcome.APPLIED:
            try:
                await slot.charger.execute(verdict.command)
            except Exception as exc:
                log.error("%s: write failed: %s", slot.charger_id, _why(slot, exc))
                verdict = Verdict(outcome=Outcome.REFUSED, reasons=(*verdict.reasons, f"write failed: {exc}"))
                if self.circuits is not None:  # it may have been done in part
                    self._update_load(slot.charger_id, reading, attempted=judgement.memory)
            else:
                self._governor.record(judgement, sent_at_s=self.clock.now())
                self._log_command(slot, verdict)
                if self.circuits is not None:
                    self._update_load(slot.charger_id, reading)
        record = DecisionRecord(
            at_s=now,
            decision=decision,
            verdict=verdict,
            strategy=strategy_name,
            mode=slot.mode,
            override=slot.override,
            grid_power_w=snapshot.grid_power_w,
            charger_age_s=reading.age_s,
        )
        slot.last_record = record
        for observer in self._observers:
            try:
                observer(record, slot.charger_id)
            except Exception:
                log.exception("decision observer failed")
        return verdict

    def _log_command(self, slot: ChargerSlot, verdict: Verdict) -> None:
        cmd = verdict.command
        assert cmd is not None
        parts = []
        if cmd.current_a is not None:
            parts.append(f"current {cmd.current_a:g} A")
        if cmd.release is not None:
            parts.append("release on" if cmd.release else "release off")
        if cmd.phases is not None:
            parts.append(f"{cmd.phases} phase{'s' if cmd.phases != 1 else ''}")
        if cmd.lock is not None:
            parts.append("locked" if cmd.lock else "unlocked")
        notes = f" [{'; '.join(verdict.reasons)}]" if verdict.reasons else ""
        log.info("%s: %s (%s)%s", slot.charger_id, ", ".join(parts), cmd.reason, notes)

    async def shutdown(self) -> None:
        """Leave each charger in its safe state, then stop heartbeats (last), then meters."""
        for slot in self._slots.values():
            if slot.started:
                async with slot.lock:
                    await self._leave_safe(slot)
        for slot in self._slots.values():
            if slot.started:
                try:
                    await slot.charger.stop()
                except Exception as exc:
                    log.error("%s: stop failed: %s", slot.charger_id, _why(slot, exc))
        for task in self._meter_tasks:
            task.cancel()
        self._meter_tasks = []
        for meter in self._meters:
            try:
                await meter.stop()
            except Exception as exc:
                log.error("meter %s: stop failed: %s", meter.meter_id, _meter_why(meter.meter_id, exc))

    async def _sleep_unless_hurried(self, seconds: float) -> None:
        deadline = self.clock.now() + seconds
        while not self._hurry and self.clock.now() < deadline:
            await self.clock.sleep(min(0.1, deadline - self.clock.now()))

    async def _leave_safe(self, slot: ChargerSlot, max_wait_s: float = 12.0) -> None:
        """Send the configured safe state; wait out a spacing rule if the governor asks (bounded)."""
        decision = dataclasses.replace(self._fallback(slot, "shutdown"), source=Source.SHUTDOWN)
        deadline = self.clock.now() + max_wait_s
        for _ in range(4):  # a command, perhaps a scheduled remainder, then UNCHANGED
            now = self.clock.now()
            reading = self._snapshot.chargers.get(slot.charger_id) or ChargerReading(
                charger_id=slot.charger_id, state=None
            )
            judgement = self._governor.judge(decision, reading, now)
            verdict = judgement.verdict
            if verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s is not None:
                if verdict.retry_at_s > deadline or self._hurry:
                    break
                log.info(
                    "%s: waiting %.1f s to send the safe state (%s); Ctrl-C again to skip",
                    slot.charger_id,
                    verdict.retry_at_s - now,
                    "; ".join(verdict.reasons),
                )
                await self._sleep_unless_hurried(verdict.retry_at_s - now)
                continue
            if verdict.command is not None and verdict.outcome is Outcome.APPLIED:
                try:
                    await slot.charger.execute(verdict.command)
                except Exception as exc:
                    log.error("%s: could not set the safe state: %s", slot.charger_id, _why(slot, exc))
                    return
                self._governor.record(judgement, sent_at_s=self.clock.now())
                self._log_command(slot, verdict)
                continue
            if verdict.outcome is Outcome.REFUSED and decision.charge:
                # hold_min on a paused box: shutdown never starts charging, so paused is the safe state.
                log.info("%s: paused; left paused", slot.charger_id)
            elif verdict.outcome is Outcome.REFUSED:
                log.warning(
                    "%s: safe state on shutdown refused: %s", slot.charger_id, "; ".join(verdict.reasons)
                )
            return
        log.warning("%s: safe state not sent (skipped or not reached in %.0f s)", slot.charger_id, max_wait_s)


#: Mains voltage for the plausibility bound, with a margin for what a fuse carries briefly.
_PLAUSIBLE_V, _PLAUSIBLE_MARGIN = 230.0, 1.5


def plausible_meter_w(site_fuse_a: float, phases: int = 3) -> float:
    """The most power (W, either sign) a house connection with ``site_fuse_a`` per phase can carry."""
    return phases * _PLAUSIBLE_V * site_fuse_a * _PLAUSIBLE_MARGIN


def implausible(reading: MeterReading, max_w: float) -> str | None:
    """Why a reading cannot be true (not a number, or beyond what the site can carry), or None."""
    for name, value in (
        ("grid", reading.grid_power_w),
        ("PV", reading.pv_power_w),
        ("house", reading.house_power_w),
        ("battery", reading.battery_power_w),
    ):
        if value is None:
            continue
        if not math.isfinite(value):
            return f"implausible {name} power {value} W (not a finite number)"
        if abs(value) > max_w:
            return (
                f"implausible {name} power {value:.6g} W: beyond the {max_w / 1000:.1f} kW the house "
                f"connection can carry (control.site_fuse_a)"
            )
    soc = reading.battery_soc_pct
    if soc is not None and not 0 <= soc <= 100:
        return f"implausible battery state of charge {soc:g} % (not 0..100)"
    return None


def _meter_why(meter_id: str, exc: BaseException) -> str:
    """The exception's text without a leading "meter <id>: " (the log line names the meter already)."""
    text = str(exc) or type(exc).__name__
    prefix = f"meter {meter_id}: "
    return text[len(prefix) :] if text.startswith(prefix) else text
