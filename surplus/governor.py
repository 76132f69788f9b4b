"""The safety governor: the single gate every setpoint passes.

:func:`govern` is pure (no I/O, no clock): it takes a :class:`Decision`, the
charger's latest reading, the charger's limits, what was sent so far
(:class:`GovernorMemory`) and the time, and returns a :class:`Verdict` plus the
memory as it will be *if* the verdict's command is executed.
:class:`SafetyGovernor` keeps one memory per charger for the loop.

How the loop uses a verdict:

* ``APPLIED``: send ``command`` now. If ``retry_at_s`` is set, part of the
  decision is still held (the reasons say which); re-submit the decision from
  then on (the loop re-submits every tick anyway).
* ``SCHEDULED``: nothing to send now; a spacing rule holds the decision until
  ``retry_at_s``. The governor keeps no queue: the next submission is judged
  afresh, so a newer decision (e.g. a person's) simply replaces a held one.
* ``REFUSED``: nothing is sent; the reasons say why.
* ``UNCHANGED``: the charger already does what was asked.

Rules and the choices made where the brief left room (tests name each one):

* Currents are a pause or within ``[6 A, ceiling]``, ceiling = min(32 A,
  device max, cable, fuse, shared headroom). Above the ceiling is clamped (as
  evcc-like tools do); below 6 A, NaN, infinity and negative values are refused
  -- never a silent pause, and never 0 A (the AMTRON reads 0 as "no limit").
  If the ceiling itself is below 6 A, charging is refused: the loop must send a
  pause (the governor never invents one).
* A soft pause writes ``limits.soft_pause_a`` and leaves the release alone; a
  release pause writes release off and leaves the current alone. The current and
  release of one decision travel together or not at all, so a resume never
  happens at a stale current.
* Pause/resume cycles are ``pause_resume_interval_s`` apart: a pause is never
  held by this rule (stopping is the safe direction), and a resume waits until
  that long after the last pause, except a person's (``Source.OVERRIDE``).
* The 5 s spacing of current changes and of release toggles holds for every
  source, shutdown included. The device needs it, a write it ignores would leave
  us believing in a safe state that does not exist, and the wait is at most
  5 s (the loop waits out ``retry_at_s`` on shutdown).
* Phase switches: only with ``capabilities.phase_switching``; the minutes-long
  ``phase_switch_interval_s`` binds strategies, not persons; the device's own
  switching pause (``capabilities.phase_switch_pause_s`` after a switch was
  sent to a box whose car was drawing, or about to) binds everyone except a
  shutdown, which must reach the safe state in bounded time. A box that offers
  no current (paused) switches without that pause, so nothing waits for it. A phase change is always sent alone: a pause goes before it,
  currents and resumes after it. While a phase change is held by the interval,
  a decrease or pause still goes, a raise waits with it.
* Stale charger data (no state, not connected, or older than
  ``stale_after_s``): no resume, no increase, no phase switch; decreases and
  pauses pass. Fallback and shutdown decisions never go upward at all (the
  governor cannot see meter staleness, so "never upward" is enforced by source).
* A safety pause only pauses: lock and phase parts in it are dropped with a
  reason instead of refusing the pause.
* Lock/unlock: persons only. A lock toggle stops or starts charging like a
  release toggle, so lock and release toggles share one spacing
  (``release_toggle_interval_s``): each is that far from the last of either.
* While the box runs its switching pause, the safe direction is never held: a
  pause, a lock and a lower current go at once (by their own spacing rules);
  resumes, raises, unlocks and further switches wait for the pause to end.
* Persons may switch phases more often than strategies, but not without limit
  (contactors wear): at least ``person_phase_switch_interval_s`` apart.
* UNCHANGED needs both: memory holds the value, and a fresh readback taken
  after that write agrees (a reboot or another master is noticed and undone).
  After :meth:`SafetyGovernor.forget` the readback alone decides; a readback of
  0 A ("no limit") counts as the device maximum, so a fallback to 6 A from it is
  a decrease. The first pause/resume after ``forget`` starts the 5-minute clock.
* With a ``store`` the memory is saved after every write and restored at start,
  so the spacing rules hold across restarts and kill -9
  (:mod:`surplus.governor_store`).
* Shared fuse (several chargers): the loop passes ``shared_headroom_a``, the
  tightest per-phase headroom of the charger's circuits (each limit minus what
  the other chargers beneath it draw or are set to: :mod:`surplus.circuits`);
  it is one more ceiling, so a charge below 6 A of headroom is refused and the
  loop sends a pause instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from .types import (
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    SOFT_PAUSE_MAX_A,
    SOFT_PAUSE_MIN_A,
    ChargerReading,
    ChargerState,
    Command,
    Decision,
    Outcome,
    PauseKind,
    Source,
    Verdict,
)

#: Currents closer than this are the same setpoint (float32 readback, the 6.01 A quirk).
SAME_CURRENT_A = 0.05
#: How often the recovery writes are repeated while the box still reports a lost energy manager.
RECOVERY_RETRY_S = 30.0

_SAFETY_SOURCES = frozenset({Source.FALLBACK, Source.SHUTDOWN})


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


@dataclass(slots=True)
class _Plan:
    """Working state of one evaluation: reasons, what goes now, when held parts may follow."""

    reasons: list[str] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    current_a: float | None = None
    release: bool | None = None
    phases: int | None = None
    lock: bool | None = None
    clamp: tuple[float, float, str] | None = None

    @property
    def sends(self) -> bool:
        return not (
            self.current_a is None and self.release is None and self.phases is None and self.lock is None
        )


def _fresh_state(reading: ChargerReading, limits: Limits) -> ChargerState | None:
    return reading.state if stale_reason(reading, limits) is None else None


def _seconds(wait_s: float) -> str:
    """A wait for people: rounded up to 0.1 s, so a held decision never reads "0.0 s"."""
    return f"{math.ceil(wait_s * 10) / 10:.1f}"


def _same_current(a: float, b: float) -> bool:
    return abs(a - b) < SAME_CURRENT_A


def _readback_phases(state: ChargerState) -> int:
    # REQUESTED_PHASES: 1 = one phase, 0 = all phases.
    return 1 if state.requested_phases == 1 else 3


def _current_needed(target: float, memory: GovernorMemory, fresh: ChargerState | None) -> bool:
    """True unless what was sent and a fresh readback taken after it both hold ``target``."""
    if memory.current_a is not None and not _same_current(memory.current_a, target):
        return True
    if fresh is None:
        return memory.current_a is None
    # A readback older than our write may not show it yet; a newer one must (reboot, another master).
    read_after = memory.current_at_s is None or fresh.read_at_s > memory.current_at_s
    return read_after and not _same_current(fresh.current_limit_a, target)


def _flag_needed(
    target: bool, sent: bool | None, sent_at: float | None, fresh: ChargerState | None, readback: bool
) -> bool:
    """Like :func:`_current_needed` for a two-valued register (release, phases, lock)."""
    if sent is not None and sent != target:
        return True
    if fresh is None:
        return sent is None
    read_after = sent_at is None or fresh.read_at_s > sent_at
    return read_after and readback != target


def _was_charging(memory: GovernorMemory, fresh: ChargerState | None, min_a: float) -> bool | None:
    if memory.charging is not None:
        return memory.charging
    if fresh is None:
        return None
    limit = fresh.current_limit_a
    # 0 A reads as "no limit": the box charges at its maximum.
    return fresh.charging_release and not 0 < limit < min_a


def _previous_current(memory: GovernorMemory, fresh: ChargerState | None, min_a: float) -> float | None:
    """The charging current to keep when a decision gives none (never "no limit")."""
    if memory.current_a is not None:
        return memory.current_a if memory.current_a >= min_a else None
    if fresh is not None and fresh.current_limit_a >= min_a:
        return fresh.current_limit_a
    return None


def _present_current(memory: GovernorMemory, fresh: ChargerState | None, min_a: float) -> float | None:
    """The current the box charges at now, for telling a decrease from a raise."""
    if memory.current_a is None and fresh is not None and fresh.current_limit_a == 0:
        # 0 reads as "no limit": the box signals its own maximum.
        return fresh.capabilities.max_current_a
    return _previous_current(memory, fresh, min_a)


def govern(
    decision: Decision,
    reading: ChargerReading,
    limits: Limits,
    memory: GovernorMemory,
    now: float,
    *,
    shared_headroom_a: float | None = None,
) -> tuple[Verdict, GovernorMemory]:
    """Judge one decision. Pure: the same inputs give the same verdict.

    Returns the verdict and the memory as it will be if ``verdict.command`` is
    executed (unchanged when there is no command). Send ``verdict.command``
    whenever it is not None (only ``APPLIED`` carries one).
    """
    plan = _Plan()

    def refuse(why: str) -> tuple[Verdict, GovernorMemory]:
        return Verdict(outcome=Outcome.REFUSED, reasons=(*plan.reasons, why)), memory

    if decision.charger_id != reading.charger_id:
        return refuse(f"reading is for charger {reading.charger_id!r}, decision for {decision.charger_id!r}")
    if not math.isfinite(now):
        return refuse(f"clock time {now!r} is not finite")

    safety_pause = decision.source in _SAFETY_SOURCES and not decision.charge
    stale = stale_reason(reading, limits)
    fresh = _fresh_state(reading, limits)
    state = reading.state
    min_a = max(MIN_CURRENT_A, limits.min_current_a)
    want_phases = decision.phases
    want_lock = decision.lock

    if safety_pause:
        if want_phases is not None:
            plan.reasons.append(f"phase request ignored: a {decision.source} pause only pauses")
            want_phases = None
        if want_lock is not None:
            plan.reasons.append(f"lock request ignored: a {decision.source} pause only pauses")
            want_lock = None
    if want_lock is not None and not decision.person_decides("lock"):
        return refuse(f"lock/unlock is for persons only, not for a {decision.source} decision")
    if want_phases is not None:
        if want_phases not in (1, 3):
            return refuse(f"phases must be 1 or 3, not {want_phases!r}")
        if state is None:
            return refuse("phase switching refused: the charger's capabilities are not known yet")
        if not state.capabilities.phase_switching:
            return refuse("this charger cannot switch phases (PHASE_OPTIONS_HW is not '1 or 3 phases')")

    # --- the charge group: what CHARGING_CURRENT_EM and CHARGING_RELEASE_EM should hold
    want_current: float | None
    want_release: bool | None
    was_charging = _was_charging(memory, fresh, min_a)
    upward = False
    if decision.charge:
        requested = decision.current_a
        if requested is None:
            requested = _previous_current(memory, fresh, min_a)
            if requested is None:
                return refuse(
                    f"no current given and no previous charging current to keep; "
                    f"give a current of at least {min_a:g} A"
                )
        if math.isnan(requested):
            return refuse("current is not a number (NaN)")
        if math.isinf(requested):
            return refuse(f"current {requested} A is not finite")
        if requested < 0:
            return refuse(f"current {requested:g} A is negative")
        if requested < min_a:
            return refuse(
                f"{requested:g} A is below the minimum charging current of {min_a:g} A "
                f"(ask for a pause to stop charging)"
            )
        ceiling, why = current_ceiling(limits, reading, shared_headroom_a)
        if ceiling < min_a:
            return refuse(
                f"cannot charge: the ceiling is {ceiling:g} A ({why}), below the minimum of {min_a:g} A"
            )
        if requested > ceiling:
            plan.reasons.append(f"{requested:g} A clamped to {ceiling:g} A ({why})")
            plan.clamp = (requested, ceiling, why)
            requested = ceiling
        want_current, want_release = requested, True
        previous = _present_current(memory, fresh, min_a) if was_charging else None
        upward = previous is None or (requested > previous and not _same_current(requested, previous))
        if upward and stale is not None:
            return refuse(f"{stale}: no resume or increase on stale data (decreases and pauses are allowed)")
        if upward and decision.source in _SAFETY_SOURCES:
            return refuse(f"a {decision.source} decision never resumes charging or raises the current")
    elif (decision.pause_kind or limits.default_pause) is PauseKind.SOFT:
        want_current, want_release = limits.soft_pause_a, None
    else:
        want_current, want_release = None, False

    need_current = want_current is not None and _current_needed(want_current, memory, fresh)
    need_release = want_release is not None and _flag_needed(
        want_release, memory.release, memory.release_at_s, fresh, fresh is not None and fresh.charging_release
    )
    if fresh is not None and fresh.em_lost and decision.source is not Source.SHUTDOWN:
        # After a missed heartbeat (e.g. the controller was restarted) the box sits in
        # error 200 although its registers still hold our values: only the recovery
        # writes (heartbeat, release 1, a current; the driver orders them) bring it back.
        # A paused box recovers with the soft-pause current (the EV is offered 0 A), so
        # the recovery never starts charging; a release pause follows by the usual rules.
        last = memory.current_at_s
        if last is None or now - last >= RECOVERY_RETRY_S:
            if not decision.charge:
                want_current, want_release = limits.soft_pause_a, True
            need_current = need_release = True
            what = "setpoint re-sent" if decision.charge else "re-sent with the soft-pause current"
            plan.reasons.append(f"recovery: the charger lost its energy manager (error 200); {what}")
    need_group = need_current or need_release
    need_phases = want_phases is not None and _flag_needed(
        want_phases == 1,
        None if memory.phases is None else memory.phases == 1,
        memory.phases_at_s,
        fresh,
        fresh is not None and _readback_phases(fresh) == 1,
    )
    need_lock = want_lock is not None and _flag_needed(
        want_lock, memory.lock, None, fresh, fresh is not None and fresh.locked
    )

    if need_phases and stale is not None:
        return refuse(f"{stale}: no phase switch on stale data")
    if not (need_group or need_phases or need_lock):
        return Verdict(outcome=Outcome.UNCHANGED, reasons=tuple(plan.reasons), clamp=plan.clamp), memory

    # --- spacing rules
    switch_pause_s = _switch_pause_s(state, fresh)
    lock_ready_at = _lock_ready_at(limits, memory, plan, need_lock, now)
    if decision.source is not Source.SHUTDOWN and memory.phases_at_s is not None:
        end = memory.phases_at_s + memory.phases_pause_s
        if now < end:
            safe_group = need_group and (not decision.charge or (not upward and not need_release))
            safe_lock = need_lock and want_lock is True
            if not (safe_group or safe_lock):
                plan.reasons.append(
                    f"the charger is switching phases for another {end - now:.1f} s; "
                    f"only a pause, a lock or a lower current is sent meanwhile"
                )
                return (
                    Verdict(
                        outcome=Outcome.SCHEDULED,
                        reasons=tuple(plan.reasons),
                        retry_at_s=end,
                        clamp=plan.clamp,
                    ),
                    memory,
                )
            # The safe direction is never held by the box's switching pause.
            plan.reasons.append(
                f"the charger is switching phases for another {end - now:.1f} s; the safe part goes now"
            )
            if safe_group:
                ready = _group_ready_at(
                    decision, limits, memory, plan, need_current, need_release, safety_pause, now
                )
                if now >= ready:
                    _send_group(plan, want_current, want_release, need_current, need_release)
                else:
                    plan.held.append(ready)
            if safe_lock:
                if now >= lock_ready_at:
                    plan.lock = True
                else:
                    plan.held.append(lock_ready_at)
            if need_phases or (need_group and not safe_group) or (need_lock and not safe_lock):
                plan.held.append(end)
            return _verdict(decision, plan, memory, was_charging, now, switch_pause_s)

    group_ready_at = _group_ready_at(
        decision, limits, memory, plan, need_current, need_release, safety_pause, now
    )
    group_ready = now >= group_ready_at
    phases_ready_at = -math.inf
    interval_s = limits.phase_switch_interval_s
    if need_phases and memory.phases_at_s is not None:
        if decision.person_decides("phases"):
            interval_s = limits.person_phase_switch_interval_s
            plan.reasons.append(
                f"phase switch interval waived: person override (a person's switches at least "
                f"{interval_s:g} s apart)"
            )
        phases_ready_at = memory.phases_at_s + interval_s
    if need_phases and now < phases_ready_at:
        plan.reasons.append(
            f"phase switch held for another {_seconds(phases_ready_at - now)} s "
            f"(switches at least {interval_s:g} s apart)"
        )

    if need_phases and not decision.charge and need_group:
        # Pause first: a switch while charging runs the box's switch pause and then charges again.
        if group_ready:
            _send_group(plan, want_current, want_release, need_current, need_release)
            _send_lock(plan, want_lock, need_lock, lock_ready_at, now)
            plan.reasons.append("the phase switch follows the pause")
            plan.held.append(max(now, phases_ready_at))
        else:
            plan.held.append(group_ready_at)
    elif need_phases and now >= phases_ready_at:
        plan.phases = want_phases
        if need_group or need_lock:
            # The switch starts at once; everything else waits until the box's switch pause is over.
            plan.held.append(max(now + switch_pause_s, group_ready_at))
            plan.reasons.append("the rest of the decision follows after the phase switch")
    else:
        if need_phases:
            plan.held.append(phases_ready_at)
        if need_group:
            if need_phases and upward and _fewer_phases(want_phases, memory, fresh):
                # More amps on the phases in use than meant for fewer phases would draw more power.
                plan.reasons.append("the raise waits for the phase switch")
                plan.held.append(max(group_ready_at, phases_ready_at))
            elif group_ready:
                _send_group(plan, want_current, want_release, need_current, need_release)
            else:
                plan.held.append(group_ready_at)
        _send_lock(plan, want_lock, need_lock, lock_ready_at, now)
    return _verdict(decision, plan, memory, was_charging, now, switch_pause_s)


def _send_lock(plan: _Plan, want_lock: bool | None, need_lock: bool, ready_at: float, now: float) -> None:
    """The lock part goes when its toggle spacing allows, else it is held until then."""
    if not need_lock:
        return
    if now >= ready_at:
        plan.lock = want_lock
    else:
        plan.held.append(ready_at)


def _lock_ready_at(limits: Limits, memory: GovernorMemory, plan: _Plan, need_lock: bool, now: float) -> float:
    """When a lock toggle may be sent: ``release_toggle_interval_s`` after the last release or lock toggle."""
    if not need_lock:
        return -math.inf
    last = max((t for t in (memory.release_at_s, memory.lock_at_s) if t is not None), default=None)
    if last is None:
        return -math.inf
    at = last + limits.release_toggle_interval_s
    if now < at:
        plan.reasons.append(
            f"lock held for another {_seconds(at - now)} s (a lock toggle stops or starts charging: "
            f"toggles at least {limits.release_toggle_interval_s:g} s apart)"
        )
    return at


def _verdict(
    decision: Decision,
    plan: _Plan,
    memory: GovernorMemory,
    was_charging: bool | None,
    now: float,
    switch_pause_s: float,
) -> tuple[Verdict, GovernorMemory]:
    """The verdict for a finished plan, and the memory as it will be once its command is sent."""
    if not plan.sends:
        return Verdict(
            outcome=Outcome.SCHEDULED,
            reasons=tuple(plan.reasons),
            retry_at_s=min(plan.held),
            clamp=plan.clamp,
        ), memory
    command = Command(
        charger_id=decision.charger_id,
        current_a=plan.current_a,
        release=plan.release,
        phases=plan.phases,
        lock=plan.lock,
        reason=decision.reason,
    )
    verdict = Verdict(
        outcome=Outcome.APPLIED,
        command=command,
        reasons=tuple(plan.reasons),
        retry_at_s=min(plan.held) if plan.held else None,
        clamp=plan.clamp,
    )
    return verdict, _remember(memory, command, decision.charge, was_charging, now, switch_pause_s)


def _switch_pause_s(state: ChargerState | None, fresh: ChargerState | None) -> float:
    """The box's own pause if it switched phases now: none while it offers the car no current.

    The AMTRON runs its switching pause (PHASE_SWITCHING_PAUSE) only when the car
    draws or is about to; a paused box switches at once. Without fresh data the
    pause is assumed (the safe side: nothing is sent during it).
    """
    if state is None:
        return 0.0
    pause = state.capabilities.phase_switch_pause_s
    if fresh is not None and not fresh.charging and fresh.signaled_current_a <= 0.0:
        return 0.0
    return pause


def _fewer_phases(want_phases: int | None, memory: GovernorMemory, fresh: ChargerState | None) -> bool:
    """The wanted phases are fewer than the box uses (or may use) now."""
    if want_phases is None:
        return False
    present = memory.phases if memory.phases is not None else (_readback_phases(fresh) if fresh else 3)
    return want_phases < present


def _group_ready_at(
    decision: Decision,
    limits: Limits,
    memory: GovernorMemory,
    plan: _Plan,
    need_current: bool,
    need_release: bool,
    safety_pause: bool,
    now: float,
) -> float:
    """When the current/release part may be sent; adds a reason for each rule that holds it."""
    rules: list[tuple[float, str]] = []
    if need_current and memory.current_at_s is not None:
        rules.append(
            (
                memory.current_at_s + limits.current_change_interval_s,
                f"current changes at least {limits.current_change_interval_s:g} s apart",
            )
        )
    toggled = [t for t in (memory.release_at_s, memory.lock_at_s) if t is not None]
    if need_release and toggled:
        rules.append(
            (
                max(toggled) + limits.release_toggle_interval_s,
                f"release and lock toggles at least {limits.release_toggle_interval_s:g} s apart",
            )
        )
    # Only a resume waits: a pause (stopping) is always the safe direction, and holding
    # resumes until 5 min after the last pause keeps whole cycles at least that far apart.
    resume = decision.charge and memory.charging is False
    if (need_current or need_release) and resume and memory.charging_changed_at_s is not None:
        at = memory.charging_changed_at_s + limits.pause_resume_interval_s
        if decision.person_decides("charge") or safety_pause:
            if now < at:
                who = "person override" if decision.person_decides("charge") else f"{decision.source} pause"
                plan.reasons.append(f"pause/resume interval waived: {who}")
        else:
            rules.append((at, f"a resume at least {limits.pause_resume_interval_s:g} s after a pause"))
    ready = -math.inf
    for at, rule in rules:
        if now < at:
            plan.reasons.append(f"held for another {_seconds(at - now)} s ({rule})")
        ready = max(ready, at)
    return ready


def _send_group(
    plan: _Plan, want_current: float | None, want_release: bool | None, need_current: bool, need_release: bool
) -> None:
    """The current and release of one decision go together (a resume never runs at a stale current)."""
    if need_current:
        plan.current_a = want_current
    if need_release:
        plan.release = want_release


def _remember(
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


_NOTHING_SENT = GovernorMemory()


class GovernorStoreLike(Protocol):
    """Where the memory survives a restart (:class:`surplus.governor_store.GovernorStore`)."""

    def load(self) -> dict[str, GovernorMemory]: ...

    def save(self, memories: Mapping[str, GovernorMemory]) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    """One run of the rules: the verdict, and the memory its command leaves when sent."""

    charger_id: str
    verdict: Verdict
    #: None: nothing to remember (an unknown charger).
    memory: GovernorMemory | None
    #: The time the rules were run for.
    now: float


class SafetyGovernor:
    """One :class:`GovernorMemory` per charger around :func:`govern`.

    Call :meth:`evaluate`, execute ``verdict.command`` with the driver, and only
    when that succeeded call :meth:`commit` with the *same* decision, reading and
    ``now`` (``govern`` is pure, so it gives the same verdict). Committing after
    success is the safe order: a failed write is never remembered as sent, so a
    pause that did not happen is never believed in; the cost of a write that
    partly succeeded is at most one early re-send, and the readback shows it.
    """

    def __init__(self, limits: Mapping[str, Limits], *, store: GovernorStoreLike | None = None) -> None:
        self._limits = dict(limits)
        self._store = store
        #: Restored from an earlier process: kept when the charger is first reached.
        self._memory: dict[str, GovernorMemory] = {}
        if store is not None:
            self._memory = {cid: m for cid, m in store.load().items() if cid in self._limits}
        self._restored = set(self._memory)

    def ceiling_a(self, reading: ChargerReading) -> float:
        """The highest current the governor would allow this charger now (for strategies to plan with)."""
        limits = self._limits.get(reading.charger_id)
        return MAX_CURRENT_A if limits is None else current_ceiling(limits, reading)[0]

    def phase_switch_at_s(self, charger_id: str) -> float:
        """When a strategy's phase switch would be let through at the earliest (-inf: now)."""
        limits = self._limits.get(charger_id)
        memory = self.memory(charger_id)
        if limits is None or memory.phases_at_s is None:
            return -math.inf
        return memory.phases_at_s + max(limits.phase_switch_interval_s, memory.phases_pause_s)

    def limits(self, charger_id: str) -> Limits | None:
        """The limits of ``charger_id`` (None for an unknown charger)."""
        return self._limits.get(charger_id)

    def resume_at_s(self, charger_id: str) -> float:
        """When a strategy's resume would be let through at the earliest (-inf: now, or not paused)."""
        limits = self._limits.get(charger_id)
        memory = self.memory(charger_id)
        if limits is None or memory.charging is not False or memory.charging_changed_at_s is None:
            return -math.inf
        return memory.charging_changed_at_s + limits.pause_resume_interval_s

    def _govern(
        self, decision: Decision, reading: ChargerReading, now: float, shared_headroom_a: float | None
    ) -> tuple[Verdict, GovernorMemory | None]:
        limits = self._limits.get(decision.charger_id)
        if limits is None:
            return Verdict(
                outcome=Outcome.REFUSED, reasons=(f"unknown charger {decision.charger_id!r}",)
            ), None
        return govern(
            decision,
            reading,
            limits,
            self.memory(decision.charger_id),
            now,
            shared_headroom_a=shared_headroom_a,
        )

    def evaluate(
        self,
        decision: Decision,
        reading: ChargerReading,
        now: float,
        *,
        shared_headroom_a: float | None = None,
    ) -> Verdict:
        """Judge ``decision`` without changing memory."""
        return self._govern(decision, reading, now, shared_headroom_a)[0]

    def judge(
        self,
        decision: Decision,
        reading: ChargerReading,
        now: float,
        *,
        shared_headroom_a: float | None = None,
    ) -> Judgement:
        """Judge ``decision`` once: the verdict, and what memory becomes if its command is sent.

        Execute ``judgement.verdict.command``; when the driver succeeded, :meth:`record`
        the same judgement. The rules run once per write, and what is remembered is
        exactly what was judged.
        """
        verdict, memory = self._govern(decision, reading, now, shared_headroom_a)
        return Judgement(charger_id=decision.charger_id, verdict=verdict, memory=memory, now=now)

    def record(self, judgement: Judgement, *, sent_at_s: float | None = None) -> None:
        """Remember a judged command as sent (call after the driver succeeded).

        ``sent_at_s`` is when the write actually finished (after the judgement's
        ``now`` when the bus queued it); spacing rules then count from the device's
        point of view.
        """
        memory, now = judgement.memory, judgement.now
        if memory is not None:
            if sent_at_s is not None and sent_at_s > now:
                sent = sent_at_s

                def stamp(at: float | None) -> float | None:
                    return sent if at == now else at

                memory = replace(
                    memory,
                    current_at_s=stamp(memory.current_at_s),
                    release_at_s=stamp(memory.release_at_s),
                    charging_changed_at_s=stamp(memory.charging_changed_at_s),
                    phases_at_s=stamp(memory.phases_at_s),
                    lock_at_s=stamp(memory.lock_at_s),
                )
            self._memory[judgement.charger_id] = memory
            if self._store is not None:
                self._store.save(self._memory)

    def commit(
        self,
        decision: Decision,
        reading: ChargerReading,
        now: float,
        *,
        shared_headroom_a: float | None = None,
        sent_at_s: float | None = None,
    ) -> Verdict:
        """:meth:`judge` and :meth:`record` in one (for callers that judged nothing before)."""
        judgement = self.judge(decision, reading, now, shared_headroom_a=shared_headroom_a)
        self.record(judgement, sent_at_s=sent_at_s)
        return judgement.verdict

    def memory(self, charger_id: str) -> GovernorMemory:
        """What has been sent to ``charger_id`` (empty if nothing yet)."""
        return self._memory.get(charger_id, _NOTHING_SENT)

    def forget(self, charger_id: str) -> None:
        """Drop the memory, e.g. after a reboot or reconnect: it no longer reflects the device."""
        self._memory.pop(charger_id, None)
        self._restored.discard(charger_id)

    def restored(self, charger_id: str) -> bool:
        """True while the memory of ``charger_id`` is one an earlier process saved (see ``store``)."""
        return charger_id in self._restored

    def reached(self, charger_id: str) -> None:
        """The charger answered for the first time in this process.

        A memory restored from an earlier process is kept (its timers are what the
        rules across a restart need; the readback corrects its values); without one
        the memory starts empty.
        """
        if charger_id in self._restored:
            self._restored.discard(charger_id)
            return
        self.forget(charger_id)
