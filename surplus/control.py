"""The per-charger control: strategy -> override -> circuits -> governor -> write.

One :class:`ChargerControl` per charger. It asks the mode's strategy (any failure
becomes the configured fallback), lays a person's override over the decision, fits
it into the circuits' headroom (:class:`surplus.site.Site`), passes it through
:class:`surplus.governor.SafetyGovernor` and sends what the governor allows. It keeps
the charger's mode and override, and leaves the charger in its safe state at shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

from .clock import Clock
from .governor import SafetyGovernor
from .options import did_you_mean
from .site import Site
from .slot import ChargerSlot
from .slot import why as _why
from .state import DecisionRecord, Override
from .strategy import StrategyContext
from .types import MIN_CURRENT_A, ChargerReading, Decision, Outcome, Snapshot, Source, Verdict

log = logging.getLogger("surplus.loop")

#: Observer called after every governed decision (logging, plugins).
DecisionObserver = Callable[[DecisionRecord, str], None]


def merge_override(decision: Decision, override: Override | None) -> Decision:
    """Lay a person's override over the strategy's decision."""
    if override is None:
        return decision
    charge = override.charge
    if charge is None and override.current_a is not None:
        charge = True
    parts = {
        name
        for name, value in (("charge", charge), ("phases", override.phases), ("lock", override.lock))
        if value is not None
    }
    # A phases- or lock-only override leaves starting and stopping to the strategy, and
    # with it the rules that bind strategies (5 minutes between a pause and a resume).
    reason = override.reason if "charge" in parts else f"{override.reason}; {decision.reason}"
    return dataclasses.replace(
        decision,
        source=Source.OVERRIDE,
        charge=decision.charge if charge is None else charge,
        current_a=decision.current_a if override.current_a is None else override.current_a,
        phases=decision.phases if override.phases is None else override.phases,
        lock=decision.lock if override.lock is None else override.lock,
        pause_kind=decision.pause_kind if override.pause_kind is None else override.pause_kind,
        reason=reason,
        person_parts=frozenset(parts),
    )


def combine_override(old: Override | None, new: Override) -> Override:
    """A new override replaces the fields it sets and keeps the others."""
    if old is None:
        return new
    changes = {
        f.name: getattr(new, f.name) for f in dataclasses.fields(new) if getattr(new, f.name) is not None
    }
    return dataclasses.replace(old, **changes)


class ChargerControl:
    """Decides for one charger and writes what the governor allows. Callers hold ``slot.lock``."""

    def __init__(
        self,
        slot: ChargerSlot,
        *,
        clock: Clock,
        governor: SafetyGovernor,
        site: Site,
        has_meters: bool,
        meter_modes: frozenset[str],
        observers: Sequence[DecisionObserver],
    ) -> None:
        self.slot = slot
        self.clock = clock
        self._governor = governor
        self.site = site
        self._has_meters = has_meters
        self._meter_modes = meter_modes
        #: The controller's list: observers added later are called too.
        self._observers = observers

    # -- a person's mode and override ------------------------------------------
    def set_mode(self, mode: str) -> None:
        slot = self.slot
        if mode not in slot.strategies:
            raise ValueError(
                f"unknown mode {mode!r}{did_you_mean(mode, slot.strategies)}; "
                f"modes are {', '.join(slot.strategies)}"
            )
        if mode != slot.mode:
            log.info("%s: mode %s -> %s", slot.charger_id, slot.mode, mode)
            slot.mode = mode
            slot.mode_at_s = self.clock.now()
        if slot.override is not None:
            # Choosing a mode means "let this mode decide": an older override would mask it.
            slot.override = None
            log.info("%s: override cleared by setting mode %s", slot.charger_id, mode)

    async def set_override(self, override: Override, latest: Callable[[], Snapshot]) -> Verdict:
        """Merge ``override`` and govern now on the ``latest()`` snapshot; a refusal changes nothing."""
        slot = self.slot
        reading = latest().chargers.get(slot.charger_id)
        if not slot.started or reading is None:  # connected, but its first reading not yet in
            why = reading.error if reading is not None and reading.error else None
            why = why or ("no connection yet" if not slot.started else "no reading yet")
            return Verdict(
                outcome=Outcome.REFUSED, reasons=(f"charger {slot.charger_id} is not connected: {why}",)
            )
        async with slot.lock:
            previous, previous_at = slot.override, slot.override_at_s
            slot.override, slot.override_at_s = combine_override(previous, override), self.clock.now()
            verdict = await self.govern(latest(), self.clock.now())
            if verdict.outcome is Outcome.REFUSED:
                # a refused request changes nothing
                slot.override, slot.override_at_s = previous, previous_at
            return verdict

    def clear_override(self) -> bool:
        slot = self.slot
        had = slot.override is not None
        slot.override = None
        if had:
            log.info("%s: override cleared; strategy %s resumes", slot.charger_id, slot.mode)
        return had

    # -- the tick ---------------------------------------------------------------
    def _strategy_decision(self, snapshot: Snapshot, now: float) -> tuple[Decision, str]:
        """Ask the mode's strategy; any failure becomes the configured fallback."""
        slot = self.slot
        reading = snapshot.chargers[slot.charger_id]
        strategy = slot.strategies.get(slot.mode)
        problem: str | None = None
        if strategy is None:
            problem = f"no strategy for mode {slot.mode!r}"
        elif reading.state is None:
            problem = f"charger not readable ({reading.error or 'no data yet'})"
        elif self._has_meters and snapshot.grid_power_w is None and slot.mode in self._meter_modes:
            problem = "no fresh grid-meter reading"
        elif not self._has_meters and slot.mode in self._meter_modes:
            problem = f"mode {slot.mode} needs a grid meter and none is configured"
        if problem is None and strategy is not None and reading.state is not None:
            caps = reading.state.capabilities
            limits = self._governor.limits(slot.charger_id)
            ceiling_a = self._governor.ceiling_a(reading)
            room = self.site._room(
                slot.charger_id, snapshot, self.site._present_phases(slot.charger_id, reading)
            )
            if room is not None:
                ceiling_a = min(ceiling_a, max(room.amps, 0.0))
            ctx = StrategyContext(
                charger_id=slot.charger_id,
                now_s=now,
                wall_s=self.clock.wall(),
                min_current_a=MIN_CURRENT_A,
                # Device, cable, fuse and circuit limits: what the governor would let through.
                max_current_a=ceiling_a,
                phases_switchable=caps.phase_switching,
                phase_switch_at_s=self._governor.phase_switch_at_s(slot.charger_id),
                resume_at_s=self._governor.resume_at_s(slot.charger_id),
                phase_switch_interval_s=limits.phase_switch_interval_s if limits else 300.0,
                surplus_share=self.site.shares.get(slot.charger_id) if slot.override is None else None,
                past_sessions=None if (past := self.site.past_sessions) is None else past(slot.charger_id),
            )
            try:
                decision = strategy.decide(snapshot, ctx)
                if decision.charger_id != slot.charger_id:
                    raise ValueError(f"decision for {decision.charger_id!r}, expected {slot.charger_id!r}")
            except Exception as exc:
                problem = f"strategy {slot.mode} failed: {exc}"
                if slot.strategy_error is None:  # one line per failure streak; the traceback for debugging
                    log.error("%s: %s; falling back to %s", slot.charger_id, problem, slot.fallback)
                    log.debug("%s: strategy %s traceback", slot.charger_id, slot.mode, exc_info=True)
                slot.strategy_error = problem
            else:
                if slot.strategy_error is not None:
                    log.info("%s: strategy %s works again", slot.charger_id, slot.mode)
                    slot.strategy_error = None
                return decision, slot.mode
        return self.fallback(problem or "fallback"), "fallback"

    def fallback(self, why: str) -> Decision:
        slot = self.slot
        if slot.fallback == "hold_min":
            return Decision(
                charger_id=slot.charger_id,
                source=Source.FALLBACK,
                charge=True,
                current_a=MIN_CURRENT_A,
                reason=f"fallback hold minimum: {why}",
            )
        return Decision(
            charger_id=slot.charger_id, source=Source.FALLBACK, charge=False, reason=f"fallback pause: {why}"
        )

    async def govern(self, snapshot: Snapshot, now: float) -> Verdict:
        """Decide for one charger, pass the governor, execute what it allows. Caller holds slot.lock."""
        if self.site.circuits is None:
            return await self._govern_one(snapshot, now)
        async with self.site.circuit_lock:
            return await self._govern_one(snapshot, now)

    async def _govern_one(self, snapshot: Snapshot, now: float) -> Verdict:
        decision, strategy_name = self.decide(snapshot, now)
        return await self.apply(snapshot, now, decision, strategy_name)

    def decide(self, snapshot: Snapshot, now: float) -> tuple[Decision, str]:
        """The strategy's decision (or the fallback) and the strategy's name; an expired override ends."""
        slot = self.slot
        if slot.override is not None and slot.override.until_s is not None and now >= slot.override.until_s:
            log.info("%s: override expired; strategy %s resumes", slot.charger_id, slot.mode)
            slot.override = None
        return self._strategy_decision(snapshot, now)

    def frees_room(self, decision: Decision) -> bool:
        """Would this decision (with the person's override) pause the box or lower its current?"""
        if decision.source is not Source.FALLBACK:
            decision = merge_override(decision, self.slot.override)
        memory = self._governor.memory(self.slot.charger_id)
        if not decision.charge:
            return True
        # A resume of a paused box is a raise, whatever current it was last sent.
        sent = memory.current_a if memory.charging else None
        return decision.current_a is not None and sent is not None and decision.current_a < sent

    async def apply(self, snapshot: Snapshot, now: float, decision: Decision, strategy_name: str) -> Verdict:
        """The decision with the person's override, within the circuits, governed and written."""
        slot = self.slot
        if decision.source is not Source.FALLBACK:
            decision = merge_override(decision, slot.override)
        reading = snapshot.chargers[slot.charger_id]
        if now != snapshot.at_s:  # an RPC call between ticks: age the reading to now
            age = now - reading.state.read_at_s if reading.state else math.inf
            reading = dataclasses.replace(reading, age_s=age)
        decision, room = self.site._fit_circuits(slot, decision, reading, snapshot)
        judgement = self._governor.judge(
            decision, reading, now, shared_headroom_a=None if room is None else room.amps
        )
        verdict = judgement.verdict
        if verdict.command is not None and verdict.outcome is Outcome.APPLIED:
            try:
                await slot.charger.execute(verdict.command)
            except Exception as exc:
                log.error("%s: write failed: %s", slot.charger_id, _why(slot, exc))
                verdict = Verdict(outcome=Outcome.REFUSED, reasons=(*verdict.reasons, f"write failed: {exc}"))
                if self.site.circuits is not None:  # it may have been done in part
                    self.site._update_load(slot.charger_id, reading, attempted=judgement.memory)
            else:
                self._governor.record(judgement, sent_at_s=self.clock.now())
                self._log_command(verdict)
                if self.site.circuits is not None:
                    self.site._update_load(slot.charger_id, reading)
        record = DecisionRecord(
            at_s=now,
            decision=decision,
            verdict=verdict,
            strategy=strategy_name,
            mode=slot.mode,
            override=slot.override,
            grid_power_w=snapshot.grid_power_w,
            charger_age_s=reading.age_s,
        )
        slot.last_record = record
        slot.verdicts[verdict.outcome] = slot.verdicts.get(verdict.outcome, 0) + 1
        # A failed write is REFUSED, so APPLIED with a command was written.
        if verdict.outcome is Outcome.APPLIED and verdict.command is not None:
            slot.writes += 1
        for observer in self._observers:
            try:
                observer(record, slot.charger_id)
            except Exception:
                log.exception("decision observer failed")
        return verdict

    def _log_command(self, verdict: Verdict) -> None:
        slot = self.slot
        cmd = verdict.command
        assert cmd is not None
        parts = []
        if cmd.current_a is not None:
            parts.append(f"current {cmd.current_a:g} A")
        if cmd.release is not None:
            parts.append("release on" if cmd.release else "release off")
        if cmd.phases is not None:
            parts.append(f"{cmd.phases} phase{'s' if cmd.phases != 1 else ''}")
        if cmd.lock is not None:
            parts.append("locked" if cmd.lock else "unlocked")
        notes = f" [{'; '.join(verdict.reasons)}]" if verdict.reasons else ""
        log.info("%s: %s (%s)%s", slot.charger_id, ", ".join(parts), cmd.reason, notes)

    async def _sleep_unless_hurried(self, seconds: float, hurried: Callable[[], bool]) -> None:
        deadline = self.clock.now() + seconds
        while not hurried() and self.clock.now() < deadline:
            await self.clock.sleep(min(0.1, deadline - self.clock.now()))

    async def leave_safe(
        self, snapshot: Snapshot, hurried: Callable[[], bool], max_wait_s: float = 12.0
    ) -> None:
        """Send the configured safe state; wait out a spacing rule if the governor asks (bounded)."""
        slot = self.slot
        decision = dataclasses.replace(self.fallback("shutdown"), source=Source.SHUTDOWN)
        deadline = self.clock.now() + max_wait_s
        for _ in range(4):  # a command, perhaps a scheduled remainder, then UNCHANGED
            now = self.clock.now()
            reading = snapshot.chargers.get(slot.charger_id) or ChargerReading(
                charger_id=slot.charger_id, state=None
            )
            judgement = self._governor.judge(decision, reading, now)
            verdict = judgement.verdict
            if verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s is not None:
                if verdict.retry_at_s > deadline or hurried():
                    break
                log.info(
                    "%s: waiting %.1f s to send the safe state (%s); Ctrl-C again to skip",
                    slot.charger_id,
                    verdict.retry_at_s - now,
                    "; ".join(verdict.reasons),
                )
                await self._sleep_unless_hurried(verdict.retry_at_s - now, hurried)
                continue
            if verdict.command is not None and verdict.outcome is Outcome.APPLIED:
                try:
                    await slot.charger.execute(verdict.command)
                except Exception as exc:
                    log.error("%s: could not set the safe state: %s", slot.charger_id, _why(slot, exc))
                    return
                self._governor.record(judgement, sent_at_s=self.clock.now())
                self._log_command(verdict)
                continue
            if verdict.outcome is Outcome.REFUSED and decision.charge:
                # hold_min on a paused box: shutdown never starts charging, so paused is the safe state.
                log.info("%s: paused; left paused", slot.charger_id)
            elif verdict.outcome is Outcome.REFUSED:
                log.warning(
                    "%s: safe state on shutdown refused: %s", slot.charger_id, "; ".join(verdict.reasons)
                )
            return
        log.warning("%s: safe state not sent (skipped or not reached in %.0f s)", slot.charger_id, max_wait_s)
