"""The safety governor: tables on explicit times (it is pure), plus hypothesis properties."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surplus.governor import (
    SOFT_PAUSE_MAX_A,
    GovernorMemory,
    Limits,
    SafetyGovernor,
    current_ceiling,
    govern,
    stale_reason,
)
from surplus.types import (
    Capabilities,
    ChargerReading,
    ChargerState,
    Command,
    Decision,
    Outcome,
    PauseKind,
    Source,
    Verdict,
)
from tests.factories import charger_state

T0 = 1000.0
CID = "wallbox"
SWITCH_PAUSE_S = 120.0


def make_state(
    *,
    max_a: float = 32.0,
    switching: bool = True,
    read_at_s: float = T0 - 1000.0,
    current_limit_a: float = 10.0,
    release: bool = True,
    locked: bool = False,
    requested_phases: int = 0,
) -> ChargerState:
    """A charger charging at 10 A on three phases; the readback is old unless ``read_at_s`` says otherwise."""
    caps = Capabilities(
        phase_switching=switching,
        max_current_a=max_a,
        grid_phases=3,
        exact_6a_rejected=False,
        phase_switch_pause_s=SWITCH_PAUSE_S,
    )
    return charger_state(
        CID,
        read_at_s,
        capabilities=caps,
        signaled_current_a=10,
        current_limit_a=current_limit_a,
        requested_phases=requested_phases,
        switched_phases=requested_phases,
        charging_release=release,
        locked=locked,
    )


def make_reading(
    state: ChargerState | None = None, *, age_s: float = 1.0, connected: bool = True, **state_kw: Any
) -> ChargerReading:
    if state is None and state_kw.pop("none", False):
        return ChargerReading(charger_id=CID, state=None, age_s=math.inf, connected=connected)
    return ChargerReading(
        charger_id=CID, state=state or make_state(**state_kw), age_s=age_s, connected=connected
    )


def dec(source: Source = Source.STRATEGY, charge: bool = True, **kw: Any) -> Decision:
    return Decision(charger_id=CID, source=source, charge=charge, reason="test", **kw)


#: Charging at 10 A since long ago: every spacing rule is satisfied.
CHARGING = GovernorMemory(
    current_a=10.0,
    current_at_s=T0 - 1000,
    release=True,
    release_at_s=T0 - 1000,
    charging=True,
    charging_changed_at_s=T0 - 1000,
    phases=3,
    phases_at_s=T0 - 5000,
    lock=False,
)
HARD_PAUSED = replace(CHARGING, release=False, charging=False)
SOFT_PAUSED = replace(CHARGING, current_a=1.0, charging=False)

PERSON, STRATEGY, FALLBACK, SHUTDOWN = Source.OVERRIDE, Source.STRATEGY, Source.FALLBACK, Source.SHUTDOWN


def run(
    decision: Decision,
    *,
    reading: ChargerReading | None = None,
    limits: Limits | None = None,
    memory: GovernorMemory = CHARGING,
    now: float = T0,
    headroom: float | None = None,
) -> tuple[Verdict, GovernorMemory]:
    return govern(
        decision, reading or make_reading(), limits or Limits(), memory, now, shared_headroom_a=headroom
    )


def assert_verdict(
    verdict: Verdict, outcome: Outcome, reason_part: str | None = None, **command: Any
) -> None:
    assert verdict.outcome is outcome, verdict
    if reason_part is not None:
        assert any(reason_part in r for r in verdict.reasons), verdict.reasons
    if outcome is Outcome.APPLIED:
        assert verdict.command is not None
        assert verdict.command.reason == "test"
        for name, value in command.items():
            assert getattr(verdict.command, name) == value, (name, verdict.command)
    else:
        assert verdict.command is None
        assert verdict.reasons or outcome is Outcome.UNCHANGED


# --- rule 1: currents ---------------------------------------------------------------------------------------

# fmt: off
CURRENT_TABLE = [
    # id, requested, limits, reading kwargs, headroom, outcome, sent current, reason part
    ("5.999A-refused", 5.999, {}, {}, None, Outcome.REFUSED, None, "below the minimum charging current of 6 A"),
    ("6.0A-applied", 6.0, {}, {}, None, Outcome.APPLIED, 6.0, None),
    ("nan-refused", math.nan, {}, {}, None, Outcome.REFUSED, None, "not a number"),
    ("inf-refused", math.inf, {}, {}, None, Outcome.REFUSED, None, "not finite"),
    ("minus-inf-refused", -math.inf, {}, {}, None, Outcome.REFUSED, None, "not finite"),
    ("minus1-refused", -1.0, {}, {}, None, Outcome.REFUSED, None, "negative"),
    ("zero-refused", 0.0, {}, {}, None, Outcome.REFUSED, None, "below the minimum"),
    ("32.01A-clamped", 32.01, {}, {}, None, Outcome.APPLIED, 32.0, "32.01 A clamped to 32 A (AMTRON maximum)"),
    ("device-max-16", 20.0, {}, {"max_a": 16.0}, None, Outcome.APPLIED, 16.0, "clamped to 16 A (device maximum)"),
    ("cable-20", 25.0, {"cable_max_a": 20.0}, {}, None, Outcome.APPLIED, 20.0, "(cable maximum)"),
    ("fuse-10", 16.0, {"fuse_limit_a": 10.0}, {}, None, Outcome.APPLIED, 10.0, "clamped to 10 A (fuse limit)"),
    ("fuse-10-exact", 10.0, {"fuse_limit_a": 10.0}, {}, None, Outcome.APPLIED, 10.0, None),
    ("shared-headroom-8", 16.0, {}, {}, 8.0, Outcome.APPLIED, 8.0, "(shared fuse headroom)"),
    ("shared-headroom-4", 16.0, {}, {}, 4.0, Outcome.REFUSED, None, "ceiling is 4 A (shared fuse headroom)"),
    ("shared-headroom-nan", 16.0, {}, {}, math.nan, Outcome.REFUSED, None, "ceiling is 0 A"),
    ("shared-headroom-negative", 16.0, {}, {}, -3.0, Outcome.REFUSED, None, "ceiling is 0 A"),
    ("min-current-8", 7.0, {"min_current_a": 8.0}, {}, None, Outcome.REFUSED, None, "minimum charging current of 8 A"),
    ("decrease", 7.5, {}, {}, None, Outcome.APPLIED, 7.5, None),
]
# fmt: on


@pytest.mark.parametrize(
    ("requested", "limits", "reading_kw", "headroom", "outcome", "sent", "why"),
    [pytest.param(*row[1:], id=row[0]) for row in CURRENT_TABLE],
)
def test_current_setpoints(
    requested: float,
    limits: dict[str, float],
    reading_kw: dict[str, Any],
    headroom: float | None,
    outcome: Outcome,
    sent: float | None,
    why: str | None,
) -> None:
    # Nothing sent yet and the device reads "no limit" (0 A): every allowed setpoint is sent.
    empty = GovernorMemory()
    verdict, memory = run(
        dec(PERSON, current_a=requested),
        limits=Limits(**limits),  # type: ignore[arg-type]
        reading=make_reading(current_limit_a=0.0, **reading_kw),
        headroom=headroom,
        memory=empty,
    )
    assert_verdict(verdict, outcome, why, current_a=sent, release=None)
    if outcome is Outcome.APPLIED:
        assert memory.current_a == sent and memory.current_at_s == T0
    else:
        assert memory is empty


@pytest.mark.parametrize(
    ("memory", "reading", "outcome", "sent", "why"),
    [
        pytest.param(CHARGING, make_reading(), Outcome.UNCHANGED, None, None, id="keeps-remembered"),
        pytest.param(
            GovernorMemory(),
            make_reading(current_limit_a=12.0),
            Outcome.UNCHANGED,
            None,
            None,
            id="keeps-readback-after-forget",
        ),
        pytest.param(
            GovernorMemory(),
            make_reading(current_limit_a=0.0),
            Outcome.REFUSED,
            None,
            "no previous charging current",
            id="readback-0-is-no-limit-not-a-current",
        ),
        pytest.param(
            SOFT_PAUSED,
            make_reading(current_limit_a=1.0),
            Outcome.REFUSED,
            None,
            "no previous charging current",
            id="soft-paused-has-no-current",
        ),
        pytest.param(
            replace(CHARGING, current_a=30.0),
            make_reading(max_a=16.0),
            Outcome.APPLIED,
            16.0,
            "30 A clamped to 16 A",
            id="previous-above-new-ceiling-is-clamped",
        ),
    ],
)
def test_charge_without_current(
    memory: GovernorMemory, reading: ChargerReading, outcome: Outcome, sent: float | None, why: str | None
) -> None:
    verdict, _ = run(dec(PERSON), memory=memory, reading=reading)
    assert_verdict(verdict, outcome, why, current_a=sent)


# --- rule 4: 5 s spacing (persons too) ------------------------------------------------------------------------

# fmt: off
SPACING_TABLE = [
    # id, decision, memory, now, outcome, retry_at_s
    ("current-5.0s-ok", dec(PERSON, current_a=12.0), replace(CHARGING, current_at_s=T0), T0 + 5.0, Outcome.APPLIED, None),
    ("current-4.999s-held", dec(PERSON, current_a=12.0), replace(CHARGING, current_at_s=T0), T0 + 4.999, Outcome.SCHEDULED, T0 + 5.0),
    ("decrease-4.999s-held", dec(STRATEGY, current_a=6.0), replace(CHARGING, current_at_s=T0), T0 + 4.999, Outcome.SCHEDULED, T0 + 5.0),
    ("release-5.0s-ok", dec(PERSON, charge=False), replace(CHARGING, release_at_s=T0, charging_changed_at_s=T0), T0 + 5.0, Outcome.APPLIED, None),
    ("release-4.999s-held", dec(PERSON, charge=False), replace(CHARGING, release_at_s=T0, charging_changed_at_s=T0), T0 + 4.999, Outcome.SCHEDULED, T0 + 5.0),
    ("fallback-pause-4.999s-held", dec(FALLBACK, charge=False), replace(CHARGING, release_at_s=T0, charging_changed_at_s=T0), T0 + 4.999, Outcome.SCHEDULED, T0 + 5.0),
    ("shutdown-pause-4.999s-held", dec(SHUTDOWN, charge=False), replace(CHARGING, release_at_s=T0, charging_changed_at_s=T0), T0 + 4.999, Outcome.SCHEDULED, T0 + 5.0),
    ("soft-pause-current-4s-held", dec(PERSON, charge=False, pause_kind=PauseKind.SOFT), replace(CHARGING, current_at_s=T0), T0 + 4.0, Outcome.SCHEDULED, T0 + 5.0),
]
# fmt: on


@pytest.mark.parametrize(
    ("decision", "memory", "now", "outcome", "retry"),
    [pytest.param(*row[1:], id=row[0]) for row in SPACING_TABLE],
)
def test_five_second_spacing(
    decision: Decision, memory: GovernorMemory, now: float, outcome: Outcome, retry: float | None
) -> None:
    verdict, new = run(decision, memory=memory, now=now)
    assert_verdict(verdict, outcome)
    assert verdict.retry_at_s == retry
    if outcome is Outcome.SCHEDULED:
        assert any("5 s apart" in r for r in verdict.reasons), verdict.reasons
        assert new is memory
        # Re-submitted exactly at retry_at_s, it goes.
        again, _ = run(decision, memory=memory, now=verdict.retry_at_s)  # type: ignore[arg-type]
        assert again.outcome is Outcome.APPLIED


# --- rules 2 and 3: pause kinds, resume, the 5-minute rule ---------------------------------------------------

RECENT = T0 - 100.0  # the last pause/resume transition was 100 s ago
# fmt: off
PAUSE_TABLE = [
    # id, decision, memory, now, outcome, command fields, reason part
    # A pause is never held by the 5-minute rule (stopping is the safe direction); a resume waits 300 s after a pause.
    ("strategy-pause-goes-at-once", dec(STRATEGY, charge=False), replace(CHARGING, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"release": False, "current_a": None}, None),
    ("strategy-pause-after-300s", dec(STRATEGY, charge=False), replace(CHARGING, charging_changed_at_s=T0 - 300), T0, Outcome.APPLIED, {"release": False, "current_a": None}, None),
    ("strategy-soft-pause-goes-at-once", dec(STRATEGY, charge=False, pause_kind=PauseKind.SOFT), replace(CHARGING, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"current_a": 1.0, "release": None}, None),
    ("person-pause-release", dec(PERSON, charge=False), replace(CHARGING, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"release": False, "current_a": None}, None),
    ("person-pause-soft", dec(PERSON, charge=False, pause_kind=PauseKind.SOFT), replace(CHARGING, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"current_a": 1.0, "release": None}, None),
    ("fallback-pause", dec(FALLBACK, charge=False), replace(CHARGING, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"release": False}, None),
    ("shutdown-pause", dec(SHUTDOWN, charge=False), replace(CHARGING, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"release": False}, None),
    ("strategy-resume-release-too-soon", dec(STRATEGY, current_a=10.0), replace(HARD_PAUSED, charging_changed_at_s=RECENT), T0, Outcome.SCHEDULED, {}, "a resume at least 300 s after a pause"),
    ("strategy-resume-release-after-300s", dec(STRATEGY, current_a=8.0), replace(HARD_PAUSED, charging_changed_at_s=T0 - 300), T0, Outcome.APPLIED, {"release": True, "current_a": 8.0}, None),
    ("person-resume-release", dec(PERSON, current_a=10.0), replace(HARD_PAUSED, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"release": True, "current_a": None}, "waived"),
    ("strategy-resume-soft-too-soon", dec(STRATEGY, current_a=10.0), replace(SOFT_PAUSED, charging_changed_at_s=RECENT), T0, Outcome.SCHEDULED, {}, "300 s after a pause"),
    ("person-resume-soft", dec(PERSON, current_a=10.0), replace(SOFT_PAUSED, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"current_a": 10.0, "release": None}, "waived"),
    ("fallback-never-resumes", dec(FALLBACK, current_a=6.0), HARD_PAUSED, T0, Outcome.REFUSED, {}, "never resumes charging"),
    ("fallback-hold-minimum-from-no-limit", dec(FALLBACK, current_a=6.0), GovernorMemory(), T0, Outcome.APPLIED, {"current_a": 6.0}, None),
    ("fallback-hold-minimum-decreases", dec(FALLBACK, current_a=6.0), CHARGING, T0, Outcome.APPLIED, {"current_a": 6.0}, None),
    ("shutdown-never-raises", dec(SHUTDOWN, current_a=16.0), CHARGING, T0, Outcome.REFUSED, {}, "never resumes"),
    ("hard-to-soft-pause-not-a-transition", dec(STRATEGY, charge=False, pause_kind=PauseKind.SOFT), replace(HARD_PAUSED, charging_changed_at_s=RECENT), T0, Outcome.APPLIED, {"current_a": 1.0, "release": None}, None),
    ("already-hard-paused", dec(STRATEGY, charge=False), HARD_PAUSED, T0, Outcome.UNCHANGED, {}, None),
]
# fmt: on


@pytest.mark.parametrize(
    ("decision", "memory", "now", "outcome", "fields", "why"),
    [pytest.param(*row[1:], id=row[0]) for row in PAUSE_TABLE],
)
def test_pause_and_resume(
    decision: Decision,
    memory: GovernorMemory,
    now: float,
    outcome: Outcome,
    fields: dict[str, Any],
    why: str | None,
) -> None:
    # A readback that agrees with memory (after forget(): "no limit", released), so only the rules decide.
    reading = make_reading(current_limit_a=memory.current_a or 0.0, release=memory.release is not False)
    verdict, new = run(decision, memory=memory, now=now, reading=reading)
    assert_verdict(verdict, outcome, why, **fields)
    if outcome is Outcome.SCHEDULED:
        assert verdict.retry_at_s == RECENT + 300.0
    if outcome is Outcome.APPLIED and memory.charging is (not decision.charge):
        assert new.charging is decision.charge and new.charging_changed_at_s == now


def test_default_pause_kind_comes_from_limits() -> None:
    verdict, new = run(
        dec(STRATEGY, charge=False), limits=Limits(default_pause=PauseKind.SOFT, soft_pause_a=2.5)
    )
    assert_verdict(verdict, Outcome.APPLIED, current_a=2.5, release=None)
    assert new.charging is False and new.current_a == 2.5


# --- rule 5: phases ---------------------------------------------------------------------------------------------

SWITCHED = replace(
    CHARGING, phases=1, phases_at_s=T0, phases_pause_s=SWITCH_PAUSE_S
)  # sent at T0 while charging
# fmt: off
PHASE_TABLE = [
    # id, decision, memory, reading, now, outcome, command fields, retry, reason part
    ("no-switching-hardware", dec(PERSON, phases=1), CHARGING, make_reading(switching=False), T0, Outcome.REFUSED, {}, None, "cannot switch phases"),
    ("no-capabilities-yet", dec(PERSON, phases=1), CHARGING, make_reading(none=True), T0, Outcome.REFUSED, {}, None, "capabilities are not known"),
    ("bad-phase-count", dec(PERSON, phases=2), CHARGING, make_reading(), T0, Outcome.REFUSED, {}, None, "phases must be 1 or 3"),
    ("stale-no-switch", dec(PERSON, phases=1), CHARGING, make_reading(age_s=11.0), T0, Outcome.REFUSED, {}, None, "no phase switch on stale data"),
    ("switch-alone", dec(STRATEGY, phases=1), CHARGING, make_reading(), T0, Outcome.APPLIED, {"phases": 1, "current_a": None}, None, None),
    ("same-phases-unchanged", dec(STRATEGY, phases=3), CHARGING, make_reading(), T0, Outcome.UNCHANGED, {}, None, None),
    ("interval-299s-held", dec(STRATEGY, phases=3), SWITCHED, make_reading(), T0 + 299, Outcome.SCHEDULED, {}, T0 + 300, "switches at least 300 s apart"),
    ("interval-300s-ok", dec(STRATEGY, phases=3), SWITCHED, make_reading(), T0 + 300, Outcome.APPLIED, {"phases": 3}, None, None),
    ("person-waives-interval", dec(PERSON, phases=3), SWITCHED, make_reading(), T0 + SWITCH_PAUSE_S, Outcome.APPLIED, {"phases": 3}, None, "phase switch interval waived"),
    ("blackout-holds-person-raise", dec(PERSON, current_a=12.0), SWITCHED, make_reading(), T0 + 60, Outcome.SCHEDULED, {}, T0 + SWITCH_PAUSE_S, "switching phases for another 60.0 s"),
    ("blackout-holds-person-phases", dec(PERSON, phases=3), SWITCHED, make_reading(), T0 + 60, Outcome.SCHEDULED, {}, T0 + SWITCH_PAUSE_S, "only a pause, a lock or a lower current"),
    # The safe direction is never held by the box's switching pause.
    ("blackout-lets-a-decrease-go", dec(PERSON, current_a=8.0), SWITCHED, make_reading(), T0 + 60, Outcome.APPLIED, {"current_a": 8.0}, None, "the safe part goes now"),
    ("blackout-lets-fallback-pause-go", dec(FALLBACK, charge=False), SWITCHED, make_reading(), T0 + 60, Outcome.APPLIED, {"release": False}, None, "the safe part goes now"),
    ("blackout-lets-a-lock-go", dec(PERSON, lock=True), SWITCHED, make_reading(), T0 + 60, Outcome.APPLIED, {"lock": True}, None, "the safe part goes now"),
    ("blackout-holds-an-unlock", dec(PERSON, lock=False), replace(SWITCHED, lock=True), make_reading(locked=True), T0 + 60, Outcome.SCHEDULED, {}, T0 + SWITCH_PAUSE_S, "switching phases"),
    ("blackout-pause-goes-phases-wait", dec(PERSON, charge=False, phases=3), SWITCHED, make_reading(), T0 + 60, Outcome.APPLIED, {"release": False, "phases": None}, T0 + SWITCH_PAUSE_S, "the safe part goes now"),
    ("blackout-over", dec(PERSON, current_a=8.0), SWITCHED, make_reading(), T0 + SWITCH_PAUSE_S, Outcome.APPLIED, {"current_a": 8.0}, None, None),
    ("shutdown-ignores-blackout", dec(SHUTDOWN, charge=False), SWITCHED, make_reading(), T0 + 1, Outcome.APPLIED, {"release": False}, None, None),
    ("phases-then-current", dec(STRATEGY, phases=1, current_a=16.0), CHARGING, make_reading(), T0, Outcome.APPLIED, {"phases": 1, "current_a": None}, T0 + SWITCH_PAUSE_S, "follows after the phase switch"),
    ("pause-then-phases", dec(STRATEGY, charge=False, phases=1), CHARGING, make_reading(), T0, Outcome.APPLIED, {"release": False, "phases": None}, T0, "phase switch follows the pause"),
    ("pause-held-phases-wait", dec(STRATEGY, charge=False, phases=1), replace(CHARGING, release_at_s=T0 - 2), make_reading(), T0, Outcome.SCHEDULED, {}, T0 + 3, "release and lock toggles"),
    ("held-switch-lets-decrease-go", dec(STRATEGY, phases=3, current_a=7.0), SWITCHED, make_reading(), T0 + 200, Outcome.APPLIED, {"current_a": 7.0, "phases": None}, T0 + 300, "phase switch held"),
    # 16 A on the one phase in use is less power than the 16 A on three that was meant: it goes now.
    ("held-switch-up-lets-raise-go", dec(STRATEGY, phases=3, current_a=16.0), SWITCHED, make_reading(), T0 + 200, Outcome.APPLIED, {"current_a": 16.0, "phases": None}, T0 + 300, "phase switch held"),
    # 16 A on the three phases in use would be three times what was meant for one: it waits.
    ("held-switch-down-holds-raise", dec(STRATEGY, phases=1, current_a=16.0), replace(CHARGING, phases=3, phases_at_s=T0), make_reading(), T0 + 200, Outcome.SCHEDULED, {}, T0 + 300, "the raise waits for the phase switch"),
    ("held-switch-decrease-itself-held", dec(STRATEGY, phases=3, current_a=7.0), replace(SWITCHED, current_at_s=T0 + 198), make_reading(), T0 + 200, Outcome.SCHEDULED, {}, T0 + 203, "current changes"),
    ("safety-pause-drops-phases", dec(FALLBACK, charge=False, phases=1), CHARGING, make_reading(), T0, Outcome.APPLIED, {"release": False, "phases": None}, None, "phase request ignored"),
]
# fmt: on


@pytest.mark.parametrize(
    ("decision", "memory", "reading", "now", "outcome", "fields", "retry", "why"),
    [pytest.param(*row[1:], id=row[0]) for row in PHASE_TABLE],
)
def test_phases(
    decision: Decision,
    memory: GovernorMemory,
    reading: ChargerReading,
    now: float,
    outcome: Outcome,
    fields: dict[str, Any],
    retry: float | None,
    why: str | None,
) -> None:
    verdict, new = run(decision, memory=memory, reading=reading, now=now)
    assert_verdict(verdict, outcome, why, **fields)
    assert verdict.retry_at_s == retry
    if verdict.command is not None and verdict.command.phases is not None:
        assert verdict.command.current_a is None and verdict.command.release is None  # a switch goes alone
        assert new.phases == verdict.command.phases and new.phases_at_s == now


def test_phases_then_current_sequence() -> None:
    """The current follows the switch once the box's switching pause is over."""
    gov = SafetyGovernor({CID: Limits()})
    gov._memory[CID] = CHARGING
    decision = dec(STRATEGY, phases=1, current_a=16.0)
    first = gov.commit(decision, make_reading(), T0)
    assert first.command is not None and first.command.phases == 1
    assert gov.evaluate(decision, make_reading(), T0 + SWITCH_PAUSE_S - 0.001).outcome is Outcome.SCHEDULED
    second = gov.commit(decision, make_reading(), T0 + SWITCH_PAUSE_S)
    assert second.command is not None and second.command.current_a == 16.0 and second.command.phases is None
    assert gov.evaluate(decision, make_reading(), T0 + 500).outcome is Outcome.UNCHANGED


# --- rule 6: stale data -----------------------------------------------------------------------------------------

STALE_READINGS = {
    "no-state": make_reading(none=True),
    "age-10.01s": make_reading(age_s=10.01),
    "age-nan": make_reading(age_s=math.nan),
    "disconnected": make_reading(connected=False),
}
# fmt: off
STALE_CASES = [
    ("increase", dec(STRATEGY, current_a=16.0), CHARGING, Outcome.REFUSED, {}),
    ("person-increase", dec(PERSON, current_a=16.0), CHARGING, Outcome.REFUSED, {}),
    ("resume", dec(PERSON, current_a=8.0), HARD_PAUSED, Outcome.REFUSED, {}),
    ("resume-unknown-memory", dec(STRATEGY, current_a=8.0), GovernorMemory(), Outcome.REFUSED, {}),
    ("decrease", dec(STRATEGY, current_a=6.0), CHARGING, Outcome.APPLIED, {"current_a": 6.0}),
    ("pause", dec(STRATEGY, charge=False), CHARGING, Outcome.APPLIED, {"release": False}),
    ("same", dec(STRATEGY, current_a=10.0), CHARGING, Outcome.UNCHANGED, {}),
]
# fmt: on


@pytest.mark.parametrize("reading_id", list(STALE_READINGS))
@pytest.mark.parametrize(
    ("decision", "memory", "outcome", "fields"), [pytest.param(*row[1:], id=row[0]) for row in STALE_CASES]
)
def test_stale_data_never_upward(
    reading_id: str, decision: Decision, memory: GovernorMemory, outcome: Outcome, fields: dict[str, Any]
) -> None:
    verdict, _ = run(decision, memory=memory, reading=STALE_READINGS[reading_id])
    assert_verdict(
        verdict,
        outcome,
        "no resume or increase on stale data" if outcome is Outcome.REFUSED else None,
        **fields,
    )


def test_age_exactly_at_the_limit_is_fresh() -> None:
    assert stale_reason(make_reading(age_s=10.0), Limits()) is None
    verdict, _ = run(dec(STRATEGY, current_a=16.0), reading=make_reading(age_s=10.0))
    assert_verdict(verdict, Outcome.APPLIED, current_a=16.0)


# --- rule 7: lock -----------------------------------------------------------------------------------------------

# fmt: off
LOCK_TABLE = [
    ("strategy-refused", dec(STRATEGY, lock=True), Outcome.REFUSED, {}, "persons only"),
    ("person-lock", dec(PERSON, lock=True), Outcome.APPLIED, {"lock": True, "current_a": None}, None),
    ("person-unlock-unchanged", dec(PERSON, lock=False), Outcome.UNCHANGED, {}, None),
    ("person-lock-with-current", dec(PERSON, lock=True, current_a=12.0), Outcome.APPLIED, {"lock": True, "current_a": 12.0}, None),
    ("shutdown-drops-lock", dec(SHUTDOWN, charge=False, lock=True), Outcome.APPLIED, {"lock": None, "release": False}, "lock request ignored"),
]
# fmt: on


@pytest.mark.parametrize(
    ("decision", "outcome", "fields", "why"), [pytest.param(*row[1:], id=row[0]) for row in LOCK_TABLE]
)
def test_lock(decision: Decision, outcome: Outcome, fields: dict[str, Any], why: str | None) -> None:
    verdict, new = run(decision)
    assert_verdict(verdict, outcome, why, **fields)
    if fields.get("lock") is not None:
        assert new.lock is True


def test_lock_has_no_rate_limit() -> None:
    memory = replace(CHARGING, lock=True)
    verdict, new = run(dec(PERSON, lock=False), memory=memory, now=T0 + 0.1)
    assert_verdict(verdict, Outcome.APPLIED, lock=False)
    assert new.lock is False


# --- rule 8: unchanged vs readback ------------------------------------------------------------------------------

# fmt: off
READBACK_TABLE = [
    ("memory-and-readback-agree", CHARGING, make_reading(read_at_s=T0 - 1), Outcome.UNCHANGED, {}),
    ("newer-readback-disagrees", CHARGING, make_reading(read_at_s=T0 - 1, current_limit_a=16.0), Outcome.APPLIED, {"current_a": 10.0}),
    ("older-readback-ignored", replace(CHARGING, current_at_s=T0 - 10), make_reading(read_at_s=T0 - 11, current_limit_a=16.0), Outcome.UNCHANGED, {}),
    ("release-dropped-by-device", CHARGING, make_reading(read_at_s=T0 - 1, release=False), Outcome.APPLIED, {"release": True, "current_a": None}),
    ("within-tolerance", replace(CHARGING, current_a=10.01), make_reading(read_at_s=T0 - 1), Outcome.UNCHANGED, {}),
    ("one-notch-is-a-change", replace(CHARGING, current_a=10.05), make_reading(read_at_s=T0 - 1, current_limit_a=10.05), Outcome.APPLIED, {"current_a": 10.0}),
    ("stale-readback-ignored", CHARGING, make_reading(age_s=60, current_limit_a=16.0), Outcome.UNCHANGED, {}),
    ("forgotten-readback-agrees", GovernorMemory(), make_reading(read_at_s=T0 - 1), Outcome.UNCHANGED, {}),
    ("forgotten-readback-no-limit", GovernorMemory(), make_reading(current_limit_a=0.0), Outcome.APPLIED, {"current_a": 10.0}),
]
# fmt: on


@pytest.mark.parametrize(
    ("memory", "reading", "outcome", "fields"), [pytest.param(*row[1:], id=row[0]) for row in READBACK_TABLE]
)
def test_unchanged_needs_memory_and_readback(
    memory: GovernorMemory, reading: ChargerReading, outcome: Outcome, fields: dict[str, Any]
) -> None:
    verdict, new = run(dec(STRATEGY, current_a=10.0), memory=memory, reading=reading)
    assert_verdict(verdict, outcome, **fields)
    if outcome is Outcome.UNCHANGED:
        assert new is memory


def test_unknown_state_counts_as_a_transition() -> None:
    """After forget() the first resume is stamped; a pause may follow, the next resume waits 5 minutes."""
    reading = make_reading(release=False, current_limit_a=10.0)
    verdict, new = run(dec(STRATEGY, current_a=10.0), memory=GovernorMemory(), reading=reading)
    assert_verdict(verdict, Outcome.APPLIED, release=True, current_a=None)
    assert new.charging is True and new.charging_changed_at_s == T0
    paused, new = run(dec(STRATEGY, charge=False), memory=new, reading=reading, now=T0 + 10)
    assert paused.outcome is Outcome.APPLIED and new.charging_changed_at_s == T0 + 10
    again, _ = run(dec(STRATEGY, current_a=10.0), memory=new, reading=reading, now=T0 + 20)
    assert again.outcome is Outcome.SCHEDULED and again.retry_at_s == T0 + 310


# --- sanity ---------------------------------------------------------------------------------------------------


def test_mismatched_charger_and_bad_clock_are_refused() -> None:
    other = replace(make_reading(), charger_id="other")
    assert_verdict(
        run(dec(PERSON, current_a=10.0), reading=other)[0], Outcome.REFUSED, "reading is for charger"
    )
    assert_verdict(run(dec(PERSON, current_a=12.0), now=math.nan)[0], Outcome.REFUSED, "not finite")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"soft_pause_a": 0.0}, id="soft-pause-0"),
        pytest.param({"soft_pause_a": 6.0}, id="soft-pause-6"),
        pytest.param({"fuse_limit_a": math.nan}, id="fuse-nan"),
        pytest.param({"stale_after_s": -1.0}, id="stale-negative"),
        pytest.param({"min_current_a": 5.0}, id="min-current-5"),
    ],
)
def test_invalid_limits_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="limits: "):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_ceiling_without_state() -> None:
    reading = make_reading(none=True)
    assert current_ceiling(Limits(cable_max_a=20.0), reading) == (20.0, "cable maximum")
    assert current_ceiling(Limits(), reading, 40.0) == (32.0, "AMTRON maximum")


# --- the stateful wrapper, overrides while a change is pending ---------------------------------------------------


def test_wrapper_evaluate_commit_forget() -> None:
    gov = SafetyGovernor({CID: Limits()})
    reading = make_reading(current_limit_a=0.0)
    assert gov.memory(CID) == GovernorMemory()
    verdict = gov.evaluate(dec(STRATEGY, current_a=10.0), reading, T0)
    assert verdict.outcome is Outcome.APPLIED
    assert gov.memory(CID) == GovernorMemory()  # evaluate remembers nothing
    assert gov.commit(dec(STRATEGY, current_a=10.0), reading, T0) == verdict
    assert gov.memory(CID).current_a == 10.0 and gov.memory(CID).current_at_s == T0
    gov.forget(CID)
    gov.forget(CID)  # twice is fine
    assert gov.memory(CID) == GovernorMemory()
    unknown = Decision(charger_id="nope", source=PERSON, charge=True, current_a=10.0)
    refused = gov.commit(unknown, replace(reading, charger_id="nope"), T0)
    assert refused.outcome is Outcome.REFUSED and "unknown charger" in refused.reasons[0]
    # Forgotten: no spacing to honour; the shared headroom caps the ceiling.
    capped = gov.evaluate(dec(STRATEGY, current_a=12.0), reading, T0 + 1, shared_headroom_a=8.0)
    assert capped.command is not None and capped.command.current_a == 8.0


def test_person_replaces_a_pending_strategy_change() -> None:
    gov = SafetyGovernor({CID: Limits()})
    reading = make_reading(current_limit_a=0.0)
    gov.commit(dec(STRATEGY, current_a=10.0), reading, T0)
    held = gov.commit(dec(STRATEGY, current_a=16.0), reading, T0 + 2)
    assert held.outcome is Outcome.SCHEDULED and held.retry_at_s == T0 + 5
    person = gov.commit(dec(PERSON, current_a=8.0), reading, T0 + 3)
    assert (
        person.outcome is Outcome.SCHEDULED and person.retry_at_s == T0 + 5
    )  # the device spacing binds persons
    applied = gov.commit(dec(PERSON, current_a=8.0), reading, T0 + 5)
    assert applied.command is not None and applied.command.current_a == 8.0
    assert gov.memory(CID).current_a == 8.0


# --- shutdown always reaches the safe state ---------------------------------------------------------------------

memories = st.builds(
    GovernorMemory,
    current_a=st.one_of(st.none(), st.sampled_from([1.0, 6.0, 10.0, 16.0, 32.0])),
    current_at_s=st.one_of(st.none(), st.floats(T0 - 700, T0)),
    release=st.one_of(st.none(), st.booleans()),
    release_at_s=st.one_of(st.none(), st.floats(T0 - 700, T0)),
    charging=st.one_of(st.none(), st.booleans()),
    charging_changed_at_s=st.one_of(st.none(), st.floats(T0 - 700, T0)),
    phases=st.one_of(st.none(), st.sampled_from([1, 3])),
    phases_at_s=st.one_of(st.none(), st.floats(T0 - 2000, T0)),
    lock=st.one_of(st.none(), st.booleans()),
)
readings = st.one_of(
    st.just(make_reading(none=True)),
    st.builds(
        lambda age, conn, limit, rel, ph, max_a, sw: make_reading(
            age_s=age,
            connected=conn,
            current_limit_a=limit,
            release=rel,
            requested_phases=ph,
            max_a=max_a,
            switching=sw,
            read_at_s=T0 - 1,
        ),
        st.sampled_from([0.5, 9.0, 11.0, math.inf]),
        st.booleans(),
        st.sampled_from([0.0, 1.0, 6.0, 10.0, 32.0]),
        st.booleans(),
        st.sampled_from([0, 1]),
        st.sampled_from([16.0, 32.0]),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memory=memories, reading=readings, kind=st.sampled_from(PauseKind), lock=st.sampled_from([None, True]))
def test_shutdown_reaches_the_safe_state(
    memory: GovernorMemory, reading: ChargerReading, kind: PauseKind, lock: bool | None
) -> None:
    """Within 5 s (the device spacing), a shutdown pause is sent; then it is UNCHANGED."""
    limits = Limits()
    decision = dec(SHUTDOWN, charge=False, pause_kind=kind, lock=lock)
    now = T0
    for _ in range(3):
        verdict, new = govern(decision, reading, limits, memory, now)
        assert verdict.outcome is not Outcome.REFUSED, verdict
        if verdict.outcome is Outcome.SCHEDULED:
            assert verdict.retry_at_s is not None and verdict.retry_at_s <= T0 + 5.0
            now = verdict.retry_at_s
            continue
        if verdict.outcome is Outcome.UNCHANGED:
            break
        memory = new
    else:
        pytest.fail("no safe state after three rounds")
    if kind is PauseKind.RELEASE:
        assert memory.release is False or (memory.release is None and reading.state is not None)
    else:
        assert memory.current_a == limits.soft_pause_a or (
            memory.current_a is None and reading.state is not None
        )


# --- properties over random decisions ---------------------------------------------------------------------------

currents = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 5.99, 5.999, 6.0, 6.01, 16.0, 32.0, 32.01, -1.0]),
)
decisions = st.builds(
    lambda source, charge, current, phases, lock, kind: Decision(
        charger_id=CID,
        source=source,
        charge=charge,
        current_a=current,
        phases=phases,
        lock=lock,
        pause_kind=kind,
        reason="prop",
    ),
    st.sampled_from(Source),
    st.booleans(),
    currents,
    st.sampled_from([None, None, 1, 3, 2]),
    st.sampled_from([None, None, True, False]),
    st.sampled_from([None, *PauseKind]),
)
limit_sets = st.builds(
    Limits,
    fuse_limit_a=st.sampled_from([10.0, 16.0, 32.0]),
    cable_max_a=st.sampled_from([20.0, 32.0]),
    soft_pause_a=st.sampled_from([0.01, 1.0, SOFT_PAUSE_MAX_A]),
    default_pause=st.sampled_from(PauseKind),
)
headrooms = st.one_of(st.none(), st.sampled_from([4.0, 8.0, 25.0, math.nan]))


def check_command(
    verdict: Verdict, limits: Limits, reading: ChargerReading, headroom: float | None, now: float
) -> None:
    if verdict.outcome is Outcome.APPLIED:
        assert verdict.command is not None and not verdict.command.empty
    else:
        assert verdict.command is None
    if verdict.outcome is Outcome.SCHEDULED:
        assert verdict.retry_at_s is not None and verdict.retry_at_s > now
    current = verdict.command.current_a if verdict.command else None
    if current is not None:
        ceiling, _ = current_ceiling(limits, reading, headroom)
        assert current != 0
        assert not 5.99 < current < 6.0
        assert current == limits.soft_pause_a or 6.0 <= current <= ceiling


@settings(max_examples=600, deadline=None)
@given(
    decision=decisions,
    reading=readings,
    limits=limit_sets,
    memory=memories,
    now=st.floats(T0 - 10, T0 + 1000),
    headroom=headrooms,
)
def test_every_command_current_is_a_pause_or_within_limits(
    decision: Decision,
    reading: ChargerReading,
    limits: Limits,
    memory: GovernorMemory,
    now: float,
    headroom: float | None,
) -> None:
    verdict, _ = govern(decision, reading, limits, memory, now, shared_headroom_a=headroom)
    check_command(verdict, limits, reading, headroom, now)
    assert all(isinstance(r, str) and r for r in verdict.reasons)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.0, 400.0), decisions, st.sampled_from([0.5, 30.0]), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    limits=limit_sets,
)
def test_spacing_holds_when_commands_are_fed_back(
    steps: list[tuple[float, Decision, float, bool]], limits: Limits
) -> None:
    """Execute every command (memory follows) over a random time sequence; the spacing rules hold."""
    memory = GovernorMemory()
    now = T0
    writes: dict[str, list[float]] = {"current": [], "release": [], "phases": []}
    toggles: list[float] = []  # release and lock writes share one spacing
    transitions: list[tuple[float, Decision]] = []
    phase_times: list[tuple[float, Decision]] = []
    any_write: list[tuple[float, Decision, Command, GovernorMemory]] = []
    for dt, decision, age, switching in steps:
        now += dt
        reading = make_reading(age_s=age, switching=switching, read_at_s=T0 - 1)
        verdict, new = govern(decision, reading, limits, memory, now)
        check_command(verdict, limits, reading, None, now)
        if verdict.command is None:
            assert new == memory
            continue
        cmd = verdict.command
        any_write.append((now, decision, cmd, memory))
        if cmd.current_a is not None:
            writes["current"].append(now)
        if cmd.release is not None:
            writes["release"].append(now)
        if cmd.release is not None or cmd.lock is not None:
            toggles.append(now)
        if cmd.phases is not None:
            phase_times.append((now, decision))
        if new.charging_changed_at_s != memory.charging_changed_at_s and memory.charging is not None:
            transitions.append((now, decision))
        memory = new
    for name in ("current", "release"):
        times = writes[name]
        assert all(b - a >= 5.0 for a, b in itertools.pairwise(times)), (name, times)
    assert all(b - a >= 5.0 for a, b in itertools.pairwise(toggles)), ("toggles", toggles)
    for (a, _), (b, later) in itertools.pairwise(transitions):
        # Pauses go at once; a strategy's resume comes at least the interval after the pause before it.
        exempt = later.by_person or not later.charge
        assert exempt or b - a >= limits.pause_resume_interval_s, (a, b, later)
    for (a, _), (b, later) in itertools.pairwise(phase_times):
        if later.by_person:
            assert b - a >= limits.person_phase_switch_interval_s
        else:
            assert b - a >= limits.phase_switch_interval_s
    for at, _ in phase_times:
        during = [(t, d, c, m) for t, d, c, m in any_write if at < t < at + SWITCH_PAUSE_S]
        # During the box's switching pause only the safe direction goes: a pause, a lock, less current.
        for _t, d, c, m in during:
            if d.source is SHUTDOWN:
                continue
            assert c.phases is None and c.release is not True and c.lock is not False, (at, d, c)
            assert c.current_a is None or m.current_a is None or c.current_a <= m.current_a, (at, d, c, m)


def test_commit_counts_spacing_from_when_the_write_finished() -> None:
    """A write queued on the bus lands after the decision; the next change waits 5 s from the landing."""
    gov = SafetyGovernor({CID: Limits()})
    reading = make_reading(age_s=0.0)
    assert gov.commit(dec(current_a=8), reading, T0, sent_at_s=T0 + 0.3).outcome is Outcome.APPLIED
    assert gov.memory(CID).current_at_s == T0 + 0.3
    held = gov.evaluate(dec(current_a=12), reading, T0 + 5.1)
    assert held.outcome is Outcome.SCHEDULED
    assert held.retry_at_s == pytest.approx(T0 + 5.3)
    assert gov.evaluate(dec(current_a=12), reading, T0 + 5.3).outcome is Outcome.APPLIED


@pytest.mark.parametrize(
    ("last_sent_s", "error_code", "master_lost", "expect"),
    [
        (None, 200, False, Outcome.APPLIED),  # after forget (a restart): recover at once
        (T0 - 31, 200, False, Outcome.APPLIED),  # still in error 30 s after our last try: again
        (T0 - 10, 200, False, Outcome.UNCHANGED),  # tried 10 s ago: give the box time
        (None, 0, True, Outcome.APPLIED),  # master-lost fallback active counts too
        (None, 0, False, Outcome.UNCHANGED),  # healthy box with our values: nothing to send
    ],
    ids=["restart", "retry-after-30s", "no-retry-within-30s", "master-lost", "healthy"],
)
def test_a_box_that_lost_its_energy_manager_gets_the_recovery_writes(
    last_sent_s: float | None, error_code: int, master_lost: bool, expect: Outcome
) -> None:
    state = replace(
        make_state(read_at_s=T0 - 0.5), evse_state=6, error_code=error_code, master_lost_fallback=master_lost
    )
    memory = GovernorMemory() if last_sent_s is None else replace(CHARGING, current_at_s=last_sent_s)
    verdict, _ = govern(dec(current_a=10), make_reading(state, age_s=0.5), Limits(), memory, T0)
    assert verdict.outcome is expect, verdict
    if expect is Outcome.APPLIED:
        assert verdict.command is not None
        assert (verdict.command.current_a, verdict.command.release) == (10.0, True)
        assert any("recovery" in r for r in verdict.reasons)


@pytest.mark.parametrize("source", [STRATEGY, PERSON, FALLBACK])
def test_a_paused_box_in_error_200_recovers_without_charging(source: Source) -> None:
    """Idle at night (pv), off, no car: the box must still leave error 200, offered 0 A."""
    state = replace(make_state(read_at_s=T0 - 0.5), evse_state=6, error_code=200, charging_release=False)
    verdict, new = govern(
        dec(source, charge=False), make_reading(state, age_s=0.5), Limits(), HARD_PAUSED, T0
    )
    assert verdict.outcome is Outcome.APPLIED and verdict.command is not None, verdict
    assert (verdict.command.current_a, verdict.command.release) == (1.0, True)  # the soft-pause value
    assert any("soft-pause current" in r for r in verdict.reasons)
    assert new.charging is False  # a recovery is not a resume


def test_shutdown_does_not_recover_a_box_in_error_200() -> None:
    state = replace(make_state(read_at_s=T0 - 0.5), evse_state=6, error_code=200, charging_release=False)
    verdict, _ = govern(
        dec(SHUTDOWN, charge=False), make_reading(state, age_s=0.5), Limits(), HARD_PAUSED, T0
    )
    assert verdict.outcome is Outcome.UNCHANGED


def test_a_clamp_is_reported_as_data_in_every_outcome() -> None:
    """The RPC reply says what was really applied; it reads this field, not the reason text."""
    applied, memory = run(dec(PERSON, current_a=40.0), memory=GovernorMemory())
    assert applied.outcome is Outcome.APPLIED and applied.clamp == (40.0, 32.0, "AMTRON maximum")
    unchanged, _ = run(dec(PERSON, current_a=40.0), memory=memory, reading=make_reading(current_limit_a=32.0))
    assert unchanged.outcome is Outcome.UNCHANGED and unchanged.clamp == (40.0, 32.0, "AMTRON maximum")
    assert run(dec(PERSON, current_a=16.0), memory=GovernorMemory())[0].clamp is None


def test_a_phases_or_lock_only_override_does_not_waive_the_resume_rule() -> None:
    """QA: setRequestedPhases during pv let the strategy cycle pause/resume every minute."""
    paused = replace(HARD_PAUSED, charging_changed_at_s=T0 - 60)
    for part, extra in (("phases", {"phases": 1}), ("lock", {"lock": True})):
        merged = replace(dec(PERSON, current_a=10.0, **extra), person_parts=frozenset({part}))
        verdict, _ = run(merged, memory=paused)
        assert "300 s after a pause" in " ".join(verdict.reasons), (part, verdict)
        assert verdict.command is None or verdict.command.release is None, (part, verdict)
    person_resume = replace(dec(PERSON, current_a=10.0), person_parts=frozenset({"charge"}))
    verdict, _ = run(person_resume, memory=paused)
    assert (
        verdict.outcome is Outcome.APPLIED and verdict.command is not None and verdict.command.release is True
    )


# --- the box's switching pause only follows a switch while the car draws ------------------------------------


def _paused_box(read_at_s: float) -> ChargerReading:
    state = replace(
        make_state(read_at_s=read_at_s, release=False), evse_state=3, signaled_current_a=0.0, current_l1_a=0.0
    )
    return ChargerReading(charger_id=CID, state=state, age_s=0.5, connected=True)


PAUSED = replace(CHARGING, release=False, charging=False, charging_changed_at_s=T0 - 1000)


def test_a_paused_box_switches_phases_without_waiting_for_the_switching_pause() -> None:
    verdict, memory = govern(dec(STRATEGY, phases=1, current_a=8.0), _paused_box(T0), Limits(), PAUSED, T0)
    assert verdict.command is not None and verdict.command.phases == 1
    assert memory.phases_pause_s == 0.0
    # The resume follows on the next tick: nothing waits for a pause the box does not run.
    verdict, _ = govern(
        dec(STRATEGY, phases=1, current_a=8.0), _paused_box(T0 + 0.9), Limits(), memory, T0 + 1
    )
    assert verdict.outcome is Outcome.APPLIED and verdict.command is not None
    assert verdict.command.release is True and verdict.command.current_a == 8.0


def test_a_switch_while_charging_waits_out_the_boxs_pause() -> None:
    verdict, memory = govern(
        dec(STRATEGY, phases=1), make_reading(read_at_s=T0 - 0.5, age_s=0.5), Limits(), CHARGING, T0
    )
    assert verdict.command is not None and verdict.command.phases == 1
    assert memory.phases_pause_s == SWITCH_PAUSE_S
    verdict, _ = govern(
        dec(STRATEGY, current_a=12.0), make_reading(read_at_s=T0 + 5), Limits(), memory, T0 + 6
    )
    assert verdict.outcome is Outcome.SCHEDULED and "switching phases" in verdict.reasons[0]


def test_the_governor_tells_strategies_when_a_switch_and_a_resume_go_through() -> None:
    gov = SafetyGovernor({CID: Limits()})
    assert gov.phase_switch_at_s(CID) == -math.inf and gov.resume_at_s(CID) == -math.inf
    gov.commit(dec(STRATEGY, phases=1), make_reading(read_at_s=T0 - 0.5, age_s=0.5), T0)
    assert gov.phase_switch_at_s(CID) == T0 + 300.0  # the interval (5 min by default)
    gov.commit(dec(STRATEGY, charge=False), make_reading(read_at_s=T0 + 200, age_s=0.5), T0 + 200)
    assert gov.resume_at_s(CID) == T0 + 200 + 300.0


# --- lock toggles are toggles; persons switch phases at most once a minute -------------------------------------


def test_lock_toggles_are_spaced_like_release_toggles() -> None:
    """Six setLock true/false calls within 5 ms made six lock writes (each stops and starts charging)."""
    gov = SafetyGovernor({CID: Limits()})
    reading = make_reading(read_at_s=T0 - 0.5, age_s=0.5)
    sent = []
    for k in range(6):
        now = T0 + k * 0.001
        decision = dec(PERSON, lock=k % 2 == 0)
        verdict = gov.evaluate(decision, reading, now)
        if verdict.command is not None:
            gov.commit(decision, reading, now)
            sent.append((now, verdict.command.lock))
        else:
            assert verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s == pytest.approx(T0 + 5.0)
            assert "lock held for another 5.0 s" in verdict.reasons[-1]
    assert sent == [(T0, True)]
    # A release toggle counts against the lock toggle too, and the other way round.
    verdict = gov.evaluate(dec(PERSON, charge=False), reading, T0 + 2)
    assert verdict.outcome is Outcome.SCHEDULED and "release and lock toggles" in verdict.reasons[-1]
    verdict = gov.evaluate(dec(PERSON, lock=False), reading, T0 + 5)
    assert verdict.command is not None and verdict.command.lock is False


def test_persons_switch_phases_at_most_once_a_minute() -> None:
    limits = Limits()
    verdict, memory = govern(dec(PERSON, phases=1), make_reading(), limits, CHARGING, T0)
    assert verdict.command is not None and verdict.command.phases == 1
    verdict, _ = govern(dec(PERSON, phases=3), make_reading(), limits, memory, T0 + SWITCH_PAUSE_S)
    assert verdict.command is not None  # 120 s later: allowed (strategies would wait 300 s)
    quick = replace(SWITCHED, phases_pause_s=0.0)  # a paused box: no switching pause in the way
    verdict, _ = govern(dec(PERSON, phases=3), make_reading(), limits, quick, T0 + 10)
    assert verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s == T0 + 60.0
    assert "phase switch held for another 50.0 s (switches at least 60 s apart)" in verdict.reasons
