"""The safety governor's rules: :func:`govern` judges one decision, pure (no I/O, no clock).

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

from .governor_limits import Limits, current_ceiling, fresh_state, stale_reason
from .governor_memory import (
    GovernorMemory,
    charging_so_far,
    current_needed,
    flag_needed,
    present_current,
    previous_current,
    readback_phases,
    same_current,
)
from .governor_spacing import (
    Plan,
    box_switch_pause_s,
    fewer_phases,
    finish,
    group_ready_time,
    lock_ready_time,
    seconds_text,
    send_group,
    send_lock,
)
from .types import MIN_CURRENT_A, ChargerReading, Decision, Outcome, PauseKind, Source, Verdict

#: How often the recovery writes are repeated while the box still reports a lost energy manager.
RECOVERY_RETRY_S = 30.0

SAFETY_SOURCES = frozenset({Source.FALLBACK, Source.SHUTDOWN})


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
    plan = Plan()

    def refuse(why: str) -> tuple[Verdict, GovernorMemory]:
        return Verdict(outcome=Outcome.REFUSED, reasons=(*plan.reasons, why)), memory

    if decision.charger_id != reading.charger_id:
        return refuse(f"reading is for charger {reading.charger_id!r}, decision for {decision.charger_id!r}")
    if not math.isfinite(now):
        return refuse(f"clock time {now!r} is not finite")

    safety_pause = decision.source in SAFETY_SOURCES and not decision.charge
    stale = stale_reason(reading, limits)
    fresh = fresh_state(reading, limits)
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
    was_charging = charging_so_far(memory, fresh, min_a)
    upward = False
    if decision.charge:
        requested = decision.current_a
        if requested is None:
            requested = previous_current(memory, fresh, min_a)
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
        previous = present_current(memory, fresh, min_a) if was_charging else None
        upward = previous is None or (requested > previous and not same_current(requested, previous))
        if upward and stale is not None:
            return refuse(f"{stale}: no resume or increase on stale data (decreases and pauses are allowed)")
        if upward and decision.source in SAFETY_SOURCES:
            return refuse(f"a {decision.source} decision never resumes charging or raises the current")
    elif (decision.pause_kind or limits.default_pause) is PauseKind.SOFT:
        want_current, want_release = limits.soft_pause_a, None
    else:
        want_current, want_release = None, False

    need_current = want_current is not None and current_needed(want_current, memory, fresh)
    need_release = want_release is not None and flag_needed(
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
    need_phases = want_phases is not None and flag_needed(
        want_phases == 1,
        None if memory.phases is None else memory.phases == 1,
        memory.phases_at_s,
        fresh,
        fresh is not None and readback_phases(fresh) == 1,
    )
    need_lock = want_lock is not None and flag_needed(
        want_lock, memory.lock, None, fresh, fresh is not None and fresh.locked
    )

    if need_phases and stale is not None:
        return refuse(f"{stale}: no phase switch on stale data")
    if not (need_group or need_phases or need_lock):
        return Verdict(outcome=Outcome.UNCHANGED, reasons=tuple(plan.reasons), clamp=plan.clamp), memory

    # --- spacing rules
    switch_pause_s = box_switch_pause_s(state, fresh)
    lock_ready_at = lock_ready_time(limits, memory, plan, need_lock, now)
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
                ready = group_ready_time(
                    decision, limits, memory, plan, need_current, need_release, safety_pause, now
                )
                if now >= ready:
                    send_group(plan, want_current, want_release, need_current, need_release)
                else:
                    plan.held.append(ready)
            if safe_lock:
                if now >= lock_ready_at:
                    plan.lock = True
                else:
                    plan.held.append(lock_ready_at)
            if need_phases or (need_group and not safe_group) or (need_lock and not safe_lock):
                plan.held.append(end)
            return finish(decision, plan, memory, was_charging, now, switch_pause_s)

    group_ready_at = group_ready_time(
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
            f"phase switch held for another {seconds_text(phases_ready_at - now)} s "
            f"(switches at least {interval_s:g} s apart)"
        )

    if need_phases and not decision.charge and need_group:
        # Pause first: a switch while charging runs the box's switch pause and then charges again.
        if group_ready:
            send_group(plan, want_current, want_release, need_current, need_release)
            send_lock(plan, want_lock, need_lock, lock_ready_at, now)
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
            if need_phases and upward and fewer_phases(want_phases, memory, fresh):
                # More amps on the phases in use than meant for fewer phases would draw more power.
                plan.reasons.append("the raise waits for the phase switch")
                plan.held.append(max(group_ready_at, phases_ready_at))
            elif group_ready:
                send_group(plan, want_current, want_release, need_current, need_release)
            else:
                plan.held.append(group_ready_at)
        send_lock(plan, want_lock, need_lock, lock_ready_at, now)
    return finish(decision, plan, memory, was_charging, now, switch_pause_s)
