"""Scoring a replayed day: the car, the oracle (the physical limit) and the scores.

Pure functions on :class:`~surplus.sim.day.Day` and per-tick series, no I/O.

* **surplus** at a moment: PV minus the house minus a charging home battery,
  at least 0 (:meth:`Day.surplus_w`): the sun the car could take.
* **the oracle**: the most solar energy the car could have taken, exactly: in
  every step of the day the most of the surplus the car can draw (nothing below
  6 A on every allowed phase count, at most ``max_a`` on the phases), from
  arrival to departure, until the car's need is met.
* **solar_wh** = ∫ min(car, surplus), **grid_wh** = ∫ max(0, car − surplus),
  **capture** = solar_wh / oracle_wh, **grid share** = grid_wh / car_wh.
  Capture can exceed 1: the oracle takes nothing below 6 A, a controller that
  rides a dip at 6 A takes the little sun there is (and imports the rest).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from surplus.types import MIN_CURRENT_A

from .day import Day

#: The mains voltage used for W <-> A, as in the AMTRON model.
VOLTS = 230.0


class CarError(ValueError):
    """A bad ``--car`` description; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Car:
    """The car of a replay: when it is there, what it needs, what it can draw."""

    arrival_s: float = 8 * 3600.0
    departure_s: float = 18 * 3600.0
    energy_wh: float = 40_000.0
    max_a: float = 16.0
    #: "1" a one-phase car; "3" a three-phase car on a box that stays on three
    #: phases; "1p3p" a three-phase car on a box that switches (when it can).
    phases: str = "1p3p"

    def describe(self) -> dict[str, object]:
        """The car as JSON-friendly values (times as HH:MM)."""
        from .day import hhmm

        return {
            "arrival": hhmm(self.arrival_s),
            "departure": hhmm(self.departure_s),
            "energy_kwh": round(self.energy_wh / 1000.0, 3),
            "max_a": self.max_a,
            "phases": self.phases,
        }


CAR_KEYS = ("arrival", "departure", "energy_kwh", "capacity_kwh", "soc", "max_a", "phases")


def _time_of_day(key: str, text: str) -> float:
    hours, sep, minutes = text.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise CarError(f"--car {key}: {text!r} is not a time of day (write it as HH:MM, e.g. 08:00)")
    h, m = int(hours), int(minutes)
    if h > 24 or m > 59 or (h == 24 and m):
        raise CarError(f"--car {key}: {text!r} is not a time of day (00:00 .. 24:00)")
    return h * 3600.0 + m * 60.0


def _positive(key: str, text: str, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CarError(f"--car {key}: {text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= hi):
        raise CarError(f"--car {key}: {text} must be above 0 and at most {hi:g}")
    return value


def parse_car(text: str) -> Car:
    """``arrival=08:00,departure=18:00,energy_kwh=40,max_a=16,phases=1p3p`` -> :class:`Car`.

    Every key is optional (the defaults are those above). Instead of
    ``energy_kwh``, ``capacity_kwh`` and ``soc`` (0..1 at arrival) give the
    energy to a full battery.
    """
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise CarError(f"--car: {part!r} is not key=value")
        if key not in CAR_KEYS:
            raise CarError(f"--car: unknown key {key!r} (known: {', '.join(CAR_KEYS)})")
        values[key] = value.strip()
    car = Car()
    arrival = _time_of_day("arrival", values["arrival"]) if "arrival" in values else car.arrival_s
    departure = _time_of_day("departure", values["departure"]) if "departure" in values else car.departure_s
    if departure <= arrival:
        raise CarError("--car departure: must be after arrival (a replay covers one day)")
    energy = car.energy_wh
    if "energy_kwh" in values:
        if "capacity_kwh" in values or "soc" in values:
            raise CarError("--car: give energy_kwh, or capacity_kwh and soc, not both")
        energy = _positive("energy_kwh", values["energy_kwh"], 1000) * 1000.0
    elif "capacity_kwh" in values or "soc" in values:
        if "capacity_kwh" not in values or "soc" not in values:
            raise CarError("--car: capacity_kwh and soc go together (the energy is capacity × (1 - soc))")
        capacity = _positive("capacity_kwh", values["capacity_kwh"], 1000)
        try:
            soc = float(values["soc"])
        except ValueError:
            raise CarError(f"--car soc: {values['soc']!r} is not a number") from None
        if not 0 <= soc < 1:
            raise CarError(f"--car soc: {values['soc']} must be 0 or more and below 1 (0.3 = 30 %)")
        energy = capacity * (1.0 - soc) * 1000.0
    max_a = _positive("max_a", values["max_a"], 32) if "max_a" in values else car.max_a
    if max_a < MIN_CURRENT_A:
        raise CarError(f"--car max_a: {max_a:g} A is below the {MIN_CURRENT_A:g} A every car needs")
    phases = values.get("phases", car.phases)
    if phases not in ("1", "3", "1p3p"):
        raise CarError(f"--car phases: {phases!r} must be 1, 3 or 1p3p")
    return Car(arrival_s=arrival, departure_s=departure, energy_wh=energy, max_a=max_a, phases=phases)


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What the box and the car allow together: the oracle's and the references' limits."""

    #: Phase counts the car can charge on (1, 3 or both).
    phase_counts: tuple[int, ...]
    #: The highest current per phase (car, box, fuse and cable).
    max_a: float
    volts: float = VOLTS
    min_a: float = MIN_CURRENT_A
    #: The box's own pause when it switches phases while the car draws (PHASE_SWITCHING_PAUSE).
    switch_pause_s: float = 0.0

    def best_power_w_on(self, surplus_w: float, phases: int) -> float:
        """The most of ``surplus_w`` the car can draw on ``phases`` (0 below 6 A on them)."""
        if surplus_w < self.min_a * phases * self.volts:
            return 0.0
        return min(surplus_w, self.max_a * phases * self.volts)

    def best_power_w(self, surplus_w: float) -> float:
        """The most of ``surplus_w`` the car can draw (0 when no phase count reaches 6 A)."""
        return max(self.best_power_w_on(surplus_w, p) for p in self.phase_counts)


def oracle_wh(day: Day, car: Car, setup: Setup) -> float:
    """The most solar energy the car could have taken on ``day`` (exact, see the module docstring)."""
    got = 0.0
    for start, end, i in day.segments(car.arrival_s, min(car.departure_s, day.end_s)):
        power = setup.best_power_w(day.surplus_w(i))
        if power <= 0.0:
            continue
        energy = power * (end - start) / 3600.0
        if got + energy >= car.energy_wh:
            return car.energy_wh
        got += energy
    return got


@dataclass(slots=True)
class Series:
    """Per tick: the tick's start, the car's mean power over the tick, the setpoint, phases, grid."""

    tick_s: float = 1.0
    t_s: array[float] = field(default_factory=lambda: array("d"))
    car_w: array[float] = field(default_factory=lambda: array("d"))
    #: The current the box offers the car (0 while paused).
    current_a: array[float] = field(default_factory=lambda: array("d"))
    phases: array[float] = field(default_factory=lambda: array("d"))
    grid_w: array[float] = field(default_factory=lambda: array("d"))

    def __len__(self) -> int:
        return len(self.t_s)

    def rows(self) -> Sequence[tuple[float, float, float, float, float]]:
        return list(zip(self.t_s, self.car_w, self.current_a, self.phases, self.grid_w, strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class Energies:
    solar_wh: float
    grid_wh: float
    car_wh: float


def energies(day: Day, series: Series) -> Energies:
    """solar_wh, grid_wh and car_wh of a series (each tick split where the day's rows change)."""
    solar = grid = car = 0.0
    dt = series.tick_s
    t_s, car_w = series.t_s, series.car_w
    n = len(t_s)
    for k in range(n):
        power = car_w[k]
        if power <= 0.0:
            continue
        start = t_s[k]
        for a, b, i in day.segments(start, start + dt):
            s = day.surplus_w(i)
            span = b - a
            solar += min(power, s) * span
            grid += max(0.0, power - s) * span
            car += power * span
    return Energies(solar_wh=solar / 3600.0, grid_wh=grid / 3600.0, car_wh=car / 3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """How calm a controller was."""

    setpoint_changes: int
    pauses: int
    phase_switches: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunScore:
    """One controller on one day: the JSON row of ``surplus simulate``."""

    controller: str
    mode: str
    capture: float
    grid_share: float
    solar_wh: float
    grid_wh: float
    car_wh: float
    setpoint_changes: int
    pauses: int
    phase_switches: int

    def as_dict(self) -> dict[str, object]:
        return {
            "controller": self.controller,
            "mode": self.mode,
            "capture": round(self.capture, 4),
            "grid_share": round(self.grid_share, 4),
            "solar_wh": round(self.solar_wh, 1),
            "grid_wh": round(self.grid_wh, 1),
            "car_wh": round(self.car_wh, 1),
            "setpoint_changes": self.setpoint_changes,
            "pauses": self.pauses,
            "phase_switches": self.phase_switches,
        }


def score_run(
    controller: str, mode: str, day: Day, series: Series, counts: Counts, oracle: float
) -> RunScore:
    """The scores of one run against the day's oracle."""
    e = energies(day, series)
    return RunScore(
        controller=controller,
        mode=mode,
        # Nothing to take (e.g. arrival after sunset): nothing missed.
        capture=e.solar_wh / oracle if oracle > 0 else 1.0,
        grid_share=e.grid_wh / e.car_wh if e.car_wh > 0 else 0.0,
        solar_wh=e.solar_wh,
        grid_wh=e.grid_wh,
        car_wh=e.car_wh,
        setpoint_changes=counts.setpoint_changes,
        pauses=counts.pauses,
        phase_switches=counts.phase_switches,
    )


def count_changes(series: Series) -> Counts:
    """Setpoint changes, pauses (offering current -> not) and phase switches, from a series.

    A phase switch counts when the box offered current just before it (the car was
    charging or about to): those interrupt charging for the box's switching pause.
    A paused box choosing its phases for the next start is not counted.
    """
    changes = pauses = switches = 0
    cur, ph = series.current_a, series.phases
    for k in range(1, len(cur)):
        if cur[k] != cur[k - 1]:
            changes += 1
            if cur[k - 1] > 0 and cur[k] == 0:
                pauses += 1
        if ph[k] != ph[k - 1] and cur[k - 1] > 0:
            switches += 1
    return Counts(setpoint_changes=changes, pauses=pauses, phase_switches=switches)
