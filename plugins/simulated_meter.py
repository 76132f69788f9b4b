"""Meter type "simulated": a PV system and a house on the injected clock.

The day starts at ``start_hour`` when the meter is built and runs at the clock's
pace (a fake clock replays a day in milliseconds). PV is a smooth bell between
sunrise (6:00) and sunset (20:00) with cloud dips; the house draws a base load
plus kettle, washing-machine and fridge cycles. Clouds and appliances are drawn
from ``seed`` per simulated day, so a seed and a clock give the same day every
time.

``grid_power_w = house + chargers - pv`` (positive = import). The charger
power comes from the controller (``MeterEnv.charger_power_w``), so the meter
sees what the simulated wallbox really draws. ``house_power_w`` excludes the
chargers.

Options: ``pv_peak_w`` (default 8000), ``base_load_w`` (400), ``seed`` (1),
``start_hour`` (11.0), ``cloudiness`` (0..1, default 0.3).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surplus.hookspecs import RegisterMeter, hookimpl
from surplus.meter import Meter, MeterEnv
from surplus.options import check_known, integer, number
from surplus.types import MeterReading

SUNRISE_H = 6.0
SUNSET_H = 20.0
_DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class _Bump:
    """A smooth (raised-cosine) pulse of ``height`` centred at ``center_h``."""

    center_h: float
    half_width_h: float
    height: float

    def at(self, h: float) -> float:
        d = abs(h - self.center_h)
        if d >= self.half_width_h:
            return 0.0
        return self.height * 0.5 * (1.0 + math.cos(math.pi * d / self.half_width_h))


@dataclass(frozen=True, slots=True)
class _Block:
    """A rectangular load of ``power_w`` from ``start_h`` for ``duration_h``."""

    start_h: float
    duration_h: float
    power_w: float

    def at(self, h: float) -> float:
        return self.power_w if self.start_h <= h < self.start_h + self.duration_h else 0.0


@dataclass(frozen=True, slots=True)
class _Day:
    clouds: tuple[_Bump, ...]
    loads: tuple[_Block, ...]
    fridge_phase_h: float


class SimulatedMeter:
    """A deterministic PV + house day; see the module docstring."""

    #: ``read`` does no I/O: the loop reads it in place, without a task.
    instant = True

    def __init__(
        self,
        meter_id: str,
        env: MeterEnv,
        *,
        pv_peak_w: float = 8000.0,
        base_load_w: float = 400.0,
        seed: int = 1,
        start_hour: float = 11.0,
        cloudiness: float = 0.3,
    ) -> None:
        self.meter_id = meter_id
        self._env = env
        self.pv_peak_w = pv_peak_w
        self.base_load_w = base_load_w
        self.seed = seed
        self.start_hour = start_hour
        self.cloudiness = cloudiness
        self._t0 = env.clock.now()
        self._days: dict[int, _Day] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def sim_time_s(self) -> float:
        """Seconds since midnight of simulated day 0."""
        return self.start_hour * 3600.0 + (self._env.clock.now() - self._t0)

    def _day(self, index: int) -> _Day:
        day = self._days.get(index)
        if day is None:
            day = self._draw_day(index)
            self._days = {index: day}  # only the current day is ever asked for again
        return day

    def _draw_day(self, index: int) -> _Day:
        # A string seed hashes the same in every process (unlike hash()).
        rng = random.Random(f"surplus-sim:{self.seed}:{index}")
        clouds = tuple(
            _Bump(
                center_h=rng.uniform(SUNRISE_H, SUNSET_H),
                half_width_h=rng.uniform(3, 25) / 60.0,
                height=rng.uniform(0.4, 0.85),
            )
            for _ in range(round(self.cloudiness * 14))
        )
        loads: list[_Block] = []
        for _ in range(rng.randint(2, 4)):  # kettle
            loads.append(
                _Block(start_h=rng.uniform(6.5, 22.0), duration_h=rng.uniform(3, 4) / 60.0, power_w=2000.0)
            )
        if rng.random() < 0.7:  # washing machine: heating, then washing and spinning
            start = rng.uniform(8.0, 16.0)
            loads.append(_Block(start_h=start, duration_h=0.25, power_w=2000.0))
            loads.append(_Block(start_h=start + 0.25, duration_h=1.25, power_w=250.0))
        return _Day(clouds=clouds, loads=tuple(loads), fridge_phase_h=rng.uniform(0.0, 1.0))

    def _split(self, t_s: float) -> tuple[_Day, float]:
        index = math.floor(t_s / _DAY_S)
        return self._day(index), (t_s - index * _DAY_S) / 3600.0

    def pv_w(self, t_s: float) -> float:
        """PV power at simulated time ``t_s``."""
        day, h = self._split(t_s)
        if not SUNRISE_H < h < SUNSET_H:
            return 0.0
        clear = self.pv_peak_w * math.sin(math.pi * (h - SUNRISE_H) / (SUNSET_H - SUNRISE_H)) ** 2
        shade = 1.0
        for cloud in day.clouds:
            shade *= 1.0 - cloud.at(h)
        return clear * shade

    def house_w(self, t_s: float) -> float:
        """House load (without chargers) at simulated time ``t_s``."""
        day, h = self._split(t_s)
        fridge = 100.0 if (h + day.fridge_phase_h) % 1.0 < 1.0 / 3.0 else 0.0  # 20 min on per hour
        return self.base_load_w + fridge + sum(load.at(h) for load in day.loads)

    async def read(self) -> MeterReading:
        t_s = self.sim_time_s()
        pv = round(self.pv_w(t_s), 1)
        house = round(self.house_w(t_s), 1)
        chargers = self._env.charger_power_w() if self._env.charger_power_w is not None else 0.0
        return MeterReading(
            meter_id=self.meter_id,
            read_at_s=self._env.clock.now(),
            grid_power_w=round(house + chargers - pv, 1),
            pv_power_w=pv,
            house_power_w=house,
        )


def make_simulated(meter_id: str, options: Mapping[str, Any], env: MeterEnv) -> Meter:
    """Build a simulated meter (validates options; no I/O)."""
    check_known(options, ("pv_peak_w", "base_load_w", "seed", "start_hour", "cloudiness"))
    return SimulatedMeter(
        meter_id,
        env,
        pv_peak_w=number(options, "pv_peak_w", 8000.0, lo=0, hi=1_000_000, unit="W"),
        base_load_w=number(options, "base_load_w", 400.0, lo=0, hi=100_000, unit="W"),
        seed=integer(options, "seed", 1),
        start_hour=number(options, "start_hour", 11.0, lo=0, hi=23.999),
        cloudiness=number(options, "cloudiness", 0.3, lo=0, hi=1),
    )


@hookimpl
def surplus_register_meters(register: RegisterMeter) -> None:
    register(
        "simulated",
        make_simulated,
        summary="a simulated house with PV and clouds (no hardware)",
        options={"pv_peak_w": 8000.0, "base_load_w": 400.0, "seed": 1, "start_hour": 11.0, "cloudiness": 0.3},
    )
