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

The rules and the choices made where the brief left room are listed in
:mod:`surplus.governor_rules` (:func:`govern`); the limits are
:mod:`surplus.governor_limits`, what was sent :mod:`surplus.governor_memory`,
the spacing rules :mod:`surplus.governor_spacing`. With a ``store`` the memory
is saved after every write and restored at start (:mod:`surplus.governor_store`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from .governor_limits import Limits, current_ceiling, stale_reason
from .governor_memory import SAME_CURRENT_A, GovernorMemory
from .governor_rules import RECOVERY_RETRY_S, govern
from .types import (
    MAX_CURRENT_A,
    SOFT_PAUSE_MAX_A,
    SOFT_PAUSE_MIN_A,
    ChargerReading,
    Decision,
    Outcome,
    Verdict,
)

__all__ = [
    "MAX_CURRENT_A",
    "RECOVERY_RETRY_S",
    "SAME_CURRENT_A",
    "SOFT_PAUSE_MAX_A",
    "SOFT_PAUSE_MIN_A",
    "GovernorMemory",
    "GovernorStoreLike",
    "Judgement",
    "Limits",
    "SafetyGovernor",
    "current_ceiling",
    "govern",
    "stale_reason",
]

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
