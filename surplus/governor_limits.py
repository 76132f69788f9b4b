"""The governor's limits: what a charger may get at most, and when its data is too old to go up on.

Part of the safety governor (:mod:`surplus.governor`); pure, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .types import (
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    SOFT_PAUSE_MAX_A,
    SOFT_PAUSE_MIN_A,
    ChargerReading,
    ChargerState,
    PauseKind,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-charger limits from the config. Invalid values raise ``ValueError``."""

    fuse_limit_a: float = 32.0
    cable_max_a: float = 32.0
    min_current_a: float = 6.0
    #: Written to CHARGING_CURRENT_EM for a soft pause: 0.01..5.99, never 0.
    soft_pause_a: float = 1.0
    default_pause: PauseKind = PauseKind.RELEASE
    current_change_interval_s: float = 5.0
    release_toggle_interval_s: float = 5.0
    #: Manufacturer: pause/resume cycles more than 5 minutes apart, unless a person overrides.
    pause_resume_interval_s: float = 300.0
    #: Strategies switch phases at most this often (the box needs its pause, the car likes calm).
    phase_switch_interval_s: float = 300.0
    #: Persons switch phases at most this often (the contactors wear).
    person_phase_switch_interval_s: float = 60.0
    #: Charger data older than this is stale.
    stale_after_s: float = 10.0

    def __post_init__(self) -> None:
        # The governor is the last line of defence: refuse limits that would let it write 0 A.
        for name in (
            "fuse_limit_a",
            "cable_max_a",
            "min_current_a",
            "soft_pause_a",
            "stale_after_s",
            "current_change_interval_s",
            "release_toggle_interval_s",
            "pause_resume_interval_s",
            "phase_switch_interval_s",
            "person_phase_switch_interval_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"limits: {name} must be a finite number >= 0, not {value!r}")
        if not SOFT_PAUSE_MIN_A <= self.soft_pause_a <= SOFT_PAUSE_MAX_A:
            raise ValueError(
                f"limits: soft_pause_a must be within {SOFT_PAUSE_MIN_A}..{SOFT_PAUSE_MAX_A} A "
                f"(0 means 'no limit' on the AMTRON), not {self.soft_pause_a!r}"
            )
        if self.min_current_a < MIN_CURRENT_A:
            raise ValueError(
                f"limits: min_current_a must be at least {MIN_CURRENT_A:g} A, not {self.min_current_a!r}"
            )


def stale_reason(reading: ChargerReading, limits: Limits) -> str | None:
    """Why the reading is too stale to go upward on, or None if it is fresh."""
    if reading.state is None:
        return "no charger data"
    if not reading.connected:
        return "charger not connected"
    if not reading.age_s <= limits.stale_after_s:  # NaN counts as stale
        return f"charger data {reading.age_s:.1f} s old (limit {limits.stale_after_s:g} s)"
    return None


def current_ceiling(
    limits: Limits, reading: ChargerReading, shared_headroom_a: float | None = None
) -> tuple[float, str]:
    """The highest current allowed now and what sets it (for reasons shown to people)."""
    candidates = [
        (MAX_CURRENT_A, "AMTRON maximum"),
        (limits.cable_max_a, "cable maximum"),
        (limits.fuse_limit_a, "fuse limit"),
    ]
    if reading.state is not None:
        candidates.append((reading.state.capabilities.max_current_a, "device maximum"))
    if shared_headroom_a is not None:
        candidates.append((shared_headroom_a, "shared fuse headroom"))
    # A NaN or negative limit is broken data: it allows nothing rather than everything.
    cleaned = [(v if v >= 0 else 0.0, name) if not math.isnan(v) else (0.0, name) for v, name in candidates]
    return min(cleaned, key=lambda c: c[0])


def fresh_state(reading: ChargerReading, limits: Limits) -> ChargerState | None:
    return reading.state if stale_reason(reading, limits) is None else None
