"""The governor's spacing rules: when a held part of a decision may go, and the verdict of a plan.

Current changes, release/lock toggles, pause/resume cycles and the box's own
phase-switching pause each keep their distance; every rule that holds a part
adds a reason for people. Part of the safety governor (:mod:`surplus.governor`;
the rules are listed in :mod:`surplus.governor_rules`); pure, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .governor_limits import Limits
from .governor_memory import GovernorMemory, readback_phases, remember
from .types import ChargerState, Command, Decision, Outcome, Verdict


@dataclass(slots=True)
class Plan:
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


def seconds_text(wait_s: float) -> str:
    """A wait for people: rounded up to 0.1 s, so a held decision never reads "0.0 s"."""
    return f"{math.ceil(wait_s * 10) / 10:.1f}"


def send_lock(plan: Plan, want_lock: bool | None, need_lock: bool, ready_at: float, now: float) -> None:
    """The lock part goes when its toggle spacing allows, else it is held until then."""
    if not need_lock:
        return
    if now >= ready_at:
        plan.lock = want_lock
    else:
        plan.held.append(ready_at)


def lock_ready_time(limits: Limits, memory: GovernorMemory, plan: Plan, need_lock: bool, now: float) -> float:
    """When a lock toggle may be sent: ``release_toggle_interval_s`` after the last release or lock toggle."""
    if not need_lock:
        return -math.inf
    last = max((t for t in (memory.release_at_s, memory.lock_at_s) if t is not None), default=None)
    if last is None:
        return -math.inf
    at = last + limits.release_toggle_interval_s
    if now < at:
        plan.reasons.append(
            f"lock held for another {seconds_text(at - now)} s (a lock toggle stops or starts charging: "
            f"toggles at least {limits.release_toggle_interval_s:g} s apart)"
        )
    return at


def finish(
    decision: Decision,
    plan: Plan,
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
    return verdict, remember(memory, command, decision.charge, was_charging, now, switch_pause_s)


def box_switch_pause_s(state: ChargerState | None, fresh: ChargerState | None) -> float:
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


def fewer_phases(want_phases: int | None, memory: GovernorMemory, fresh: ChargerState | None) -> bool:
    """The wanted phases are fewer than the box uses (or may use) now."""
    if want_phases is None:
        return False
    present = memory.phases if memory.phases is not None else (readback_phases(fresh) if fresh else 3)
    return want_phases < present


def group_ready_time(
    decision: Decision,
    limits: Limits,
    memory: GovernorMemory,
    plan: Plan,
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
            plan.reasons.append(f"held for another {seconds_text(at - now)} s ({rule})")
        ready = max(ready, at)
    return ready


def send_group(
    plan: Plan, want_current: float | None, want_release: bool | None, need_current: bool, need_release: bool
) -> None:
    """The current and release of one decision go together (a resume never runs at a stale current)."""
    if need_current:
        plan.current_a = want_current
    if need_release:
        plan.release = want_release
