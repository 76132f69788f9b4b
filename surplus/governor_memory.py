"""The governor's memory: what was sent to a charger and when, and whether the box still holds it.

A value needs sending unless what was sent and a fresh readback taken after it
both hold it (a reboot or another master is noticed and undone). Part of the
safety governor (:mod:`surplus.governor`); pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .types import ChargerState, Command

#: Currents closer than this are the same setpoint: the float32 readback and the 6.01 A quirk
#: (0.01 A) are, one notch of ``pv`` on three phases (0.05 A) is not.
SAME_CURRENT_A = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernorMemory:
    """What has been sent to one charger and when: the governor's only state."""

    current_a: float | None = None
    current_at_s: float | None = None
    release: bool | None = None
    release_at_s: float | None = None
    #: Whether the last pause/resume part sent meant "charge".
    charging: bool | None = None
    #: Time of the last pause<->resume transition (whatever the pause kind).
    charging_changed_at_s: float | None = None
    phases: int | None = None
    phases_at_s: float | None = None
    #: The box's own switching pause that follows the last switch (0 when the car drew nothing).
    phases_pause_s: float = 0.0
    lock: bool | None = None
    lock_at_s: float | None = None


def same_current(a: float, b: float) -> bool:
    return abs(a - b) < SAME_CURRENT_A


def readback_phases(state: ChargerState) -> int:
    # REQUESTED_PHASES: 1 = one phase, 0 = all phases.
    return 1 if state.requested_phases == 1 else 3


def current_needed(target: float, memory: GovernorMemory, fresh: ChargerState | None) -> bool:
    """True unless what was sent and a fresh readback taken after it both hold ``target``."""
    if memory.current_a is not None and not same_current(memory.current_a, target):
        return True
    if fresh is None:
        return memory.current_a is None
    # A readback older than our write may not show it yet; a newer one must (reboot, another master).
    read_after = memory.current_at_s is None or fresh.read_at_s > memory.current_at_s
    return read_after and not same_current(fresh.current_limit_a, target)


def flag_needed(
    target: bool, sent: bool | None, sent_at: float | None, fresh: ChargerState | None, readback: bool
) -> bool:
    """Like :func:`current_needed` for a two-valued register (release, phases, lock)."""
    if sent is not None and sent != target:
        return True
    if fresh is None:
        return sent is None
    read_after = sent_at is None or fresh.read_at_s > sent_at
    return read_after and readback != target


def charging_so_far(memory: GovernorMemory, fresh: ChargerState | None, min_a: float) -> bool | None:
    if memory.charging is not None:
        return memory.charging
    if fresh is None:
        return None
    limit = fresh.current_limit_a
    # 0 A reads as "no limit": the box charges at its maximum.
    return fresh.charging_release and not 0 < limit < min_a


def previous_current(memory: GovernorMemory, fresh: ChargerState | None, min_a: float) -> float | None:
    """The charging current to keep when a decision gives none (never "no limit")."""
    if memory.current_a is not None:
        return memory.current_a if memory.current_a >= min_a else None
    if fresh is not None and fresh.current_limit_a >= min_a:
        return fresh.current_limit_a
    return None


def present_current(memory: GovernorMemory, fresh: ChargerState | None, min_a: float) -> float | None:
    """The current the box charges at now, for telling a decrease from a raise."""
    if memory.current_a is None and fresh is not None and fresh.current_limit_a == 0:
        # 0 reads as "no limit": the box signals its own maximum.
        return fresh.capabilities.max_current_a
    return previous_current(memory, fresh, min_a)


def remember(
    memory: GovernorMemory,
    command: Command,
    charge: bool,
    was_charging: bool | None,
    now: float,
    switch_pause_s: float,
) -> GovernorMemory:
    new = memory
    if command.current_a is not None:
        new = replace(new, current_a=command.current_a, current_at_s=now)
    if command.release is not None:
        new = replace(new, release=command.release, release_at_s=now)
    if command.current_a is not None or command.release is not None:
        new = replace(new, charging=charge)
        if was_charging != charge:
            new = replace(new, charging_changed_at_s=now)
    if command.phases is not None:
        new = replace(new, phases=command.phases, phases_at_s=now, phases_pause_s=switch_pause_s)
    if command.lock is not None:
        new = replace(new, lock=command.lock, lock_at_s=now)
    return new
