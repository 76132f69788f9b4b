"""Replay a measured day through the real controller on a fake clock.

The real :class:`~surplus.loop.Controller`, the strategies from the plugins,
the :class:`~surplus.governor.SafetyGovernor`, the AMTRON driver and the
AMTRON model (on the in-memory bus, without Modbus framing), with the day as
the grid meter: ``grid = house + battery + car - PV``, where the car's power is
what the model really draws. The car plugs in at its arrival and leaves at its
departure; the box, its limits and the strategy options come from the config.
The clock is a :class:`~surplus.clock.FakeClock`, so a day takes seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from surplus.chargers.amtron import AmtronCharger
from surplus.clock import FakeClock
from surplus.config import ChargerEntry, Config, to_limits
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller, plausible_meter_w
from surplus.plugins import METER_PLUGINS, collect_strategies, make_plugin_manager
from surplus.strategy import Strategy
from surplus.types import MeterReading, Snapshot

from .day import Day, hhmm
from .membus import ModelBus
from .meter_model import EXACT_METER, MeterModel
from .model import AmtronModel, DeviceProfile, EvProfile, profile_by_name
from .score import Car, Counts, Series, Setup, count_changes

#: The controller starts this long before the car arrives (it finds the box, reads it).
LEAD_S = 60.0
#: After the departure: time for the shutdown's safe state (the governor may hold it 5 s).
TAIL_S = 30.0
#: Model device id, as in the examples.
DEVICE_ID = 50
#: The day meter's noise is the same on every replay (``DayMeter``'s ``noise_w``).
NOISE_SEED = 1


class ReplayError(ValueError):
    """The config cannot be replayed (e.g. the mode is not loaded)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything one replay needs, resolved from the config and the car."""

    charger: ChargerEntry
    limits: Limits
    profile: DeviceProfile
    ev: EvProfile
    setup: Setup
    strategy_options: Mapping[str, Mapping[str, Any]]
    tick_s: float
    stale_after_s: float
    full_read_every_s: float
    meter_timeout_s: float
    meter_max_w: float


def plan_replay(config: Config, car: Car, *, charger_id: str | None = None) -> Plan:
    """Resolve the box, the car and the limits of one charger of ``config`` for ``car``."""
    entries = {c.id: c for c in config.chargers}
    if charger_id is None:
        entry = config.chargers[0]
    elif charger_id in entries:
        entry = entries[charger_id]
    else:
        raise ReplayError(f"no charger {charger_id!r} in the config (chargers: {', '.join(entries)})")
    profile = profile_by_name(config.simulator.profile)
    if car.phases == "3" and profile.phase_options_hw == 2:
        # A box that stays on three phases: its hardware option says it cannot switch.
        profile = dataclasses.replace(profile, phase_options_hw=1, phase_switching_mode=1)
    limits = to_limits(entry, config.control.stale_after_s)
    wired = 1 if profile.grid_phases_connected == 0 else 3
    if car.phases == "1" or wired == 1:
        counts: tuple[int, ...] = (1,)
    elif profile.phase_options_hw == 2:
        counts = (1, 3)
    else:
        counts = (3,)
    box_a = min(profile.max_current_evse_a, profile.max_current_house_a)
    max_a = min(car.max_a, box_a, limits.fuse_limit_a, limits.cable_max_a)
    ev = EvProfile(
        capacity_wh=car.energy_wh,
        soc=0.0,
        target_soc=1.0,
        max_current_a=car.max_a,
        phases=1 if car.phases == "1" else 3,
    )
    options = {name: dict(opts) for name, opts in entry.strategies.items()}
    schedule = options.setdefault("schedule", {})
    # The replay's car decides when it leaves and what it needs.
    # schedule takes whole minutes: a departure within one is planned for the minute before
    # (done in time); 24:00 is 00:00 of the next day.
    schedule["departure"] = hhmm(car.departure_s // 60 * 60 % 86400)
    schedule["energy_kwh"] = car.energy_wh / 1000.0
    return Plan(
        charger=entry,
        limits=limits,
        profile=profile,
        ev=ev,
        setup=Setup(
            phase_counts=counts,
            max_a=max_a,
            volts=profile.voltage_v,
            switch_pause_s=float(profile.phase_switching_pause_s),
        ),
        strategy_options=options,
        tick_s=config.control.tick_s,
        stale_after_s=config.control.stale_after_s,
        full_read_every_s=config.control.full_read_every_s,
        meter_timeout_s=config.control.meter_timeout_s,
        meter_max_w=plausible_meter_w(config.control.site_fuse_a),
    )


class DayMeter:
    """The day as a grid meter: what a meter at the house connection would read.

    How it differs from an exact meter is ``meter`` (:class:`MeterModel`): the car's
    power shown ``lag_s`` late (the rest of the house as it is); a new reading only every
    ``every_s``, in between the last one, whose ``read_at_s`` says how old it is (with
    ``polled``: stamped with the time of each read instead, as an HTTP poll would); noise
    of ``noise_w`` (seeded: a replay is repeatable).
    """

    #: ``read`` does no I/O: the loop reads it in place, without a task.
    instant = True

    def __init__(
        self,
        day: Day,
        model: AmtronModel,
        clock: FakeClock,
        t0: float,
        day_t0: float,
        meter: MeterModel = EXACT_METER,
    ) -> None:
        self.meter_id = "day"
        self._day = day
        self._model = model
        self._clock = clock
        self._offset = day_t0 - t0
        self._i = 0
        self._lag_s = meter.lag_s
        #: (time, car power) of the reads of the last ``lag_s`` seconds, oldest first.
        self._car_w: deque[tuple[float, float]] = deque()
        self._every_s = meter.every_s
        self._polled = meter.polled
        self._held: MeterReading | None = None
        self._noise_w = meter.noise_w
        self._rng = random.Random(NOISE_SEED)

    def day_time(self) -> float:
        return self._clock.now() + self._offset

    def row(self) -> int:
        """The day's row in force now (a cursor: replays only move forward)."""
        t = self.day_time()
        ts = self._day.t_s
        i = self._i
        if ts[i] > t:
            i = self._day.index(t)
        while i + 1 < len(ts) and ts[i + 1] <= t:
            i += 1
        self._i = i
        return i

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def read(self) -> MeterReading:
        held = self._held
        if held is not None and self._clock.now() - held.read_at_s < self._every_s:
            if self._polled:  # fetched now: the poll cannot know when the device measured
                return dataclasses.replace(held, read_at_s=self._clock.now())
            return held
        self._held = reading = self._reading()
        return reading

    def _reading(self) -> MeterReading:
        d, i = self._day, self.row()
        battery = d.battery_w[i]
        car = self._car_power_w()
        return MeterReading(
            meter_id=self.meter_id,
            read_at_s=self._clock.now(),
            grid_power_w=d.load_w[i] + battery + car - d.pv_w[i] + self._noise(),
            pv_power_w=d.pv_w[i],
            house_power_w=d.load_w[i],
            battery_power_w=battery if d.has_battery else None,
            battery_soc_pct=d.battery_soc[i] if d.battery_soc is not None else None,
        )

    def _noise(self) -> float:
        return self._rng.gauss(0.0, self._noise_w) if self._noise_w else 0.0

    def _car_power_w(self) -> float:
        """The car's power as the meter shows it: the latest reading at least ``lag_s`` old."""
        now, car_w = self._clock.now(), self._car_w
        car_w.append((now, self._model.charging_power_w))
        while len(car_w) > 1 and car_w[1][0] <= now - self._lag_s:
            car_w.popleft()
        return car_w[0][1]


def _midnight_wall(options: Mapping[str, Any]) -> float:
    """Unix time of a local midnight (in the schedule's zone, else the machine's), for wall-clock strategies."""
    zone_name = options.get("timezone")
    day = datetime(2024, 6, 14)  # a Friday: weekday rules of "schedule" apply
    if isinstance(zone_name, str):
        return day.replace(tzinfo=ZoneInfo(zone_name)).timestamp()
    return day.timestamp()


@dataclass(slots=True)
class _Recorder:
    """Per-tick samples of the model, turned into a :class:`Series` at the end."""

    model: AmtronModel
    meter: DayMeter
    day: Day
    from_s: float
    series: Series
    energy_wh: list[float]

    def __call__(self, snapshot: Snapshot) -> None:
        t = self.meter.day_time()
        if t < self.from_s:
            return
        m = self.model
        s = self.series
        i = self.meter.row()
        em = m.em_current_a
        offered = m.release and (em == 0.0 or em >= 6.0)
        s.t_s.append(t)
        s.current_a.append((em or m.profile.max_current_evse_a) if offered else 0.0)
        s.phases.append(1.0 if m.switched_phases == 1 else 3.0)
        self.energy_wh.append(m.energy_total_wh)
        s.grid_w.append(self.day.load_w[i] + self.day.battery_w[i] - self.day.pv_w[i])  # + car, below


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult:
    series: Series
    counts: Counts
    #: Fake-clock ticks the controller ran (lead-in included).
    ticks: int
    model: AmtronModel


def make_strategies(config: Config, plan: Plan) -> dict[str, Strategy]:
    """A new strategy per mode, with the options of the replay's charger."""
    # The day is the meter: meter plugins (and their network libraries) stay unloaded.
    blocked = (*config.plugins.blocked, *METER_PLUGINS)
    factories = collect_strategies(make_plugin_manager(blocked=blocked))
    return {name: f(plan.strategy_options.get(name, {})) for name, f in factories.items()}


async def replay(
    day: Day,
    car: Car,
    config: Config,
    *,
    mode: str,
    charger_id: str | None = None,
    meter: MeterModel = EXACT_METER,
    strategies: Mapping[str, Strategy] | None = None,
) -> ReplayResult:
    """Run the real controller through ``day`` with ``car`` in ``mode``.

    ``meter``: how the grid meter differs from an exact one (see :class:`MeterModel`).
    ``strategies``: the strategies to run (by mode), e.g. those of the day before, which
    remember the car's sessions; None: new ones from the config.
    """
    plan = plan_replay(config, car, charger_id=charger_id)
    if strategies is None:
        strategies = make_strategies(config, plan)
    if mode not in strategies:
        raise ReplayError(f"mode {mode!r} has no strategy plugin (loaded: {', '.join(sorted(strategies))})")

    start = max(day.start_s, car.arrival_s - LEAD_S)
    end = min(car.departure_s, day.end_s)
    clock = FakeClock(start=1000.0, wall_start=_midnight_wall(plan.strategy_options["schedule"]) + start)
    model = AmtronModel(clock, profile=plan.profile, keep_record=False)
    bus = ModelBus({DEVICE_ID: model}, clock)
    charger = AmtronCharger(bus, charger_id=plan.charger.id, clock=clock, device_id=DEVICE_ID)
    day_meter = DayMeter(day, model, clock, t0=clock.now(), day_t0=start, meter=meter)
    slot = ChargerSlot(
        charger=charger,
        strategies=strategies,
        mode=mode,
        fallback="pause",
    )
    controller = Controller(
        clock=clock,
        chargers=[slot],
        meters=[day_meter],
        governor=SafetyGovernor({plan.charger.id: plan.limits}),
        tick_s=plan.tick_s,
        stale_after_s=plan.stale_after_s,
        full_read_every_s=plan.full_read_every_s,
        meter_timeout_s=plan.meter_timeout_s,
        meter_max_w=plan.meter_max_w,
    )
    series = Series(tick_s=plan.tick_s)
    energy: list[float] = []
    controller.add_tick_observer(_Recorder(model, day_meter, day, car.arrival_s, series, energy))

    async def car_comes_and_goes() -> None:
        await clock.sleep(car.arrival_s - start)
        model.plug_in(plan.ev)
        await clock.sleep(end - car.arrival_s)
        model.unplug()

    quiet = logging.getLogger("surplus")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))  # a day of decisions is not for the log
    try:
        visitor = asyncio.ensure_future(car_comes_and_goes())
        run = asyncio.ensure_future(controller.run(duration_s=end - start))
        await clock.advance(end - start + TAIL_S)
        await run
        await visitor
        await bus.close()
    finally:
        quiet.setLevel(level)
    _finish(series, energy, end)
    return ReplayResult(series=series, counts=count_changes(series), ticks=controller.ticks, model=model)


def _finish(series: Series, energy_wh: list[float], end_s: float) -> None:
    """The car's mean power per tick from the energy counter, and the grid with the car in it."""
    n = len(series.t_s)
    while n and series.t_s[n - 1] >= end_s:
        n -= 1
    for column in (series.t_s, series.current_a, series.phases, series.grid_w):
        del column[n:]
    for k in range(n):
        dt = (series.t_s[k + 1] if k + 1 < n else end_s) - series.t_s[k]
        after = energy_wh[k + 1] if k + 1 < len(energy_wh) else energy_wh[-1]
        power = (after - energy_wh[k]) * 3600.0 / dt if dt > 0 else 0.0
        series.car_w.append(power)
        series.grid_w[k] += power
