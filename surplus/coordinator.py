"""The coordinator: reads the chargers and meters on their own cadences into one snapshot.

Home Assistant's ``DataUpdateCoordinator`` line. The chargers are read on every tick
(a full read every ``full_read_every_s``, spread over the chargers; one that does
not answer is started again on the next tick); meters with I/O are read by one task
each every ``tick_s``, abandoned after ``meter_timeout_s``, so a hanging meter never
slows a tick. A failure keeps the last value, marked, so its age keeps growing, and is
logged once per failure streak. :meth:`Coordinator.refresh` returns the tick's
:class:`~surplus.types.Snapshot`; it decides nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType

from .clock import Clock
from .governor import SafetyGovernor
from .meter import Meter
from .modbus import registers as R
from .slot import ChargerSlot
from .slot import why as _why
from .types import ChargerReading, ChargerState, MeterReading, Snapshot

log = logging.getLogger("surplus.loop")


class Coordinator:
    """Reads the chargers and meters; :attr:`snapshot` is the latest tick's readings."""

    def __init__(
        self,
        *,
        clock: Clock,
        slots: Mapping[str, ChargerSlot],
        meters: Sequence[Meter],
        governor: SafetyGovernor,
        tick_s: float = 1.0,
        stale_after_s: float = 10.0,
        full_read_every_s: float = 60.0,
        meter_timeout_s: float = 3.0,
        meter_max_w: float = math.inf,
        circuit_only_meters: Collection[str] = (),
    ) -> None:
        self.clock = clock
        #: Meters that measure a circuit only: not part of the grid power.
        self._circuit_only_meters = frozenset(circuit_only_meters)
        self._slots = slots
        self._meters = list(meters)
        self._governor = governor
        self._tick_s = tick_s
        self._stale_after_s = stale_after_s
        self._full_read_every_s = full_read_every_s
        self._meter_timeout_s = meter_timeout_s
        #: A reading whose powers exceed this (W, either sign) is implausible: a failed read.
        self._meter_max_w = meter_max_w
        self._meter_readings: dict[str, MeterReading] = {}
        self._meter_errors: dict[str, str] = {}
        #: One reading task per meter with I/O, from start() to close().
        self._meter_tasks: list[asyncio.Future[None]] = []
        self.snapshot = Snapshot(at_s=clock.now())

    @property
    def has_meters(self) -> bool:
        return bool(self._meters)

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

    async def refresh(self) -> Snapshot:
        """Read the chargers (and the meters without I/O) into this tick's snapshot."""
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
        self.snapshot = self._build_snapshot(self.clock.now())
        return self.snapshot

    async def close(self) -> None:
        """Stop the heartbeats of the chargers reached (after their safe state), then the meters."""
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
                phase_currents_a=m.phase_currents_a,
                grid=mid not in self._circuit_only_meters,
                age_s=age,
                error=stale,
            )
        return Snapshot(at_s=now, chargers=MappingProxyType(chargers), meters=MappingProxyType(meters))


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
