"""How a replayed grid meter differs from an exact one (``surplus simulate --meter-*``).

Kept apart from :mod:`surplus.sim.replay` so the command line can describe a meter
without importing the controller.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterModel:
    """How the replay's grid meter differs from an exact one that reads every second.

    ``lag_s``: it shows the car's power that many seconds after the box does (many
    meters are a second or more behind). ``every_s``: it takes a new reading only that
    often (a reader that posts every few seconds). ``noise_w``: each reading is off by
    Gaussian noise of that sigma, as PV inverters and house loads jitter. ``polled``:
    its readings carry the time they were fetched, not the time the meter took them,
    as a device polled over HTTP that updates every ``every_s`` does.
    """

    lag_s: float = 0.0
    every_s: float = 0.0
    noise_w: float = 0.0
    polled: bool = False

    def __post_init__(self) -> None:
        if self.polled and not self.every_s:
            raise ValueError("a polled meter needs a time between its readings (every_s)")

    @property
    def exact(self) -> bool:
        return self == EXACT_METER

    def describe(self) -> str:
        """In words, e.g. "8 s behind the box, a reading every 8 s (polled), 50 W of noise"."""
        if self.exact:
            return "exact, read every second"
        parts = []
        if self.lag_s:
            parts.append(f"{self.lag_s:g} s behind the box")
        if self.every_s:
            parts.append(f"a reading every {self.every_s:g} s" + " (polled)" * self.polled)
        if self.noise_w:
            parts.append(f"{self.noise_w:g} W of noise")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, float | bool]:
        return {"lag_s": self.lag_s, "every_s": self.every_s, "noise_w": self.noise_w, "polled": self.polled}


#: The meter the shipped table is scored with: it shows the house as it is, every second.
EXACT_METER = MeterModel()
