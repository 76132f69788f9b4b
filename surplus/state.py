"""The frozen state the controller publishes: one :class:`LoopState` per tick.

Home Assistant's ``DataUpdateCoordinator`` line: the coordinator reads the chargers
and meters, the per-charger controls decide, and the result is published as one
immutable value on a :class:`StateBoard`. RPC, ``/metrics``, MQTT and the session
history read only that value (and listen for the next one); none of them calls back
into the loop. Every value carries its time: a reading its ``read_at_s`` and age,
a mode and an override when they were set, a decision its ``at_s``.

This module imports only :mod:`surplus.types`, so every layer may use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from .types import Decision, Outcome, PauseKind, Snapshot, Verdict

log = logging.getLogger("surplus.state")

_NO_COUNTS: Mapping[Outcome, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """A person's instruction; None fields leave the strategy's choice alone."""

    charge: bool | None = None
    current_a: float | None = None
    phases: int | None = None
    lock: bool | None = None
    pause_kind: PauseKind | None = None
    #: Clock time (``Clock.now()``) at which it expires; None holds until cleared.
    until_s: float | None = None
    reason: str = "override"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    """The last decision for a charger: what was asked, what the governor said, on what inputs."""

    at_s: float
    decision: Decision
    verdict: Verdict
    strategy: str
    mode: str
    override: Override | None
    grid_power_w: float | None
    charger_age_s: float


class ChargerView(NamedTuple):
    """One charger's control state as published: mode, override, last decision, counters.

    A named tuple rather than a frozen dataclass: as immutable, and built for every
    charger on every tick at less than half the cost.
    """

    charger_id: str
    mode: str
    #: ``Clock.now()`` when the mode was set (-inf: the configured mode, since start-up).
    mode_at_s: float = -math.inf
    override: Override | None = None
    #: ``Clock.now()`` when the override was last set or changed (None: no override).
    override_at_s: float | None = None
    #: The last governed decision (its time is ``decision.at_s``); None before the first.
    decision: DecisionRecord | None = None
    #: Governed decisions since start-up, by the governor's verdict.
    verdicts: Mapping[Outcome, int] = _NO_COUNTS
    #: Commands written to the charger since start-up.
    writes: int = 0


class TickStats(NamedTuple):
    """The loop's own counters (a named tuple, like :class:`ChargerView`)."""

    ticks: int
    #: How long the last tick took on the clock (reads, decisions, writes); None before the first.
    last_tick_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopState:
    """Everything a reader may know about the running controller, frozen at one moment."""

    #: The chargers' and meters' readings (ages relative to ``snapshot.at_s``).
    snapshot: Snapshot
    #: Per charger, in the configured order.
    chargers: Mapping[str, ChargerView]
    #: None from a controller without a loop of its own (tests' fakes): no tick or verdict counts.
    loop: TickStats | None = None

    def charger(self, charger_id: str) -> ChargerView:
        """The charger's view; ``ValueError`` for an unknown charger."""
        try:
            return self.chargers[charger_id]
        except KeyError:
            raise ValueError(f"unknown charger {charger_id!r}") from None


#: A reader told about every new state (keep it cheap: it runs in the loop).
StateListener = Callable[[LoopState], None]


@dataclass(eq=False)
class StateBoard:
    """Holds the latest :class:`LoopState` and tells the listeners about each new one.

    Made before the controller, so whatever needs the state (a meter's view of the
    chargers' power, the history) gets the board rather than the controller.
    """

    latest: LoopState | None = None
    _listeners: list[StateListener] = field(default_factory=list)
    #: Listeners whose last call failed (their traceback is logged once per streak).
    _failing: set[int] = field(default_factory=set)

    def subscribe(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def publish(self, state: LoopState, *, notify: bool = True) -> None:
        """Make ``state`` the latest; with ``notify``, call the listeners (a failing one is
        logged once per failure streak, never fatal)."""
        self.latest = state
        if not notify:
            return
        for i, listener in enumerate(self._listeners):
            try:
                listener(state)
            except Exception:
                if i not in self._failing:
                    log.exception("tick observer failed (logged once until it works again)")
                    self._failing.add(i)
            else:
                if i in self._failing:
                    log.info("tick observer works again")
                    self._failing.discard(i)

    def charger_power_w(self) -> float:
        """What the chargers draw together in the latest state (W; 0 before the first)."""
        if self.latest is None:
            return 0.0
        return sum(
            r.state.power_total_w for r in self.latest.snapshot.chargers.values() if r.state is not None
        )
