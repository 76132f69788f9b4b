"""The strategy contract: from a snapshot (and the strategy's own memory) to a decision.

A strategy plugin registers a :data:`StrategyFactory` under a name (the
charger's ``mode``). The factory validates its options once, at start-up, and
returns a :class:`Strategy`. The loop calls ``decide`` once per tick per
charger with that tick's frozen snapshot; it must not do I/O. A strategy is not
pure: it may keep its own state between ticks (pv keeps its timers and recent
surplus), which is why it gets one instance per charger. Whatever it returns
still passes the safety governor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .types import MIN_CURRENT_A, ChargerState, Decision, Snapshot

#: A car offered 6 A or more that draws nothing for this long (plus the box's switching
#: pause, during which it draws nothing either) is full or waits on a timer of its own.
IDLE_S = 300.0
#: Less than this on the box's meter is drawing nothing, also in EVSE state "charging" (C):
#: some cars stay in C when full, at 0 A.
DRAWS_W = 100.0


def car_draws(state: ChargerState) -> bool:
    """The car draws: EVSE state "charging" (C) and ``DRAWS_W`` or more on the box's meter (or no reading)."""
    power = state.power_total_w
    return state.charging and not (math.isfinite(power) and power < DRAWS_W)


class IdleCar:
    """Whether the car takes nothing: it has drawn nothing for ``IDLE_S`` while offered 6 A or more.

    Drawing: the EVSE state is "charging" (C) and the box's meter shows ``DRAWS_W`` or more
    (or cannot tell).
    Offered: the box released, signalling at least 6 A, and (``offering``) the caller's own
    decision was to charge. The time counts from the first such tick; the box's switching pause
    (0x0314) is added, as no car draws during it. Once found, it holds through pauses (no
    offer) until the car draws or is unplugged; the timer starts afresh after each pause.
    pv stops following the sun for such a car, and the site gives it only what the other
    chargers sharing the surplus cannot take.
    """

    __slots__ = ("_since", "idle")

    def __init__(self) -> None:
        self._since: float | None = None
        #: The car has been found to take nothing (and has not drawn since).
        self.idle = False

    def reset(self) -> None:
        self._since, self.idle = None, False

    def update(self, state: ChargerState, now_s: float, *, offering: bool = True) -> bool:
        """Take one tick's reading of the box; return :attr:`idle`."""
        if car_draws(state) or not state.vehicle_connected:
            self.reset()
        elif offering and state.charging_release and state.signaled_current_a >= MIN_CURRENT_A:
            self._since = now_s if self._since is None else self._since
            if now_s - self._since >= IDLE_S + state.capabilities.phase_switch_pause_s:
                self.idle = True
        else:  # not offered (paused): the clock starts again, what it found stays
            self._since = None
        return self.idle


@dataclass(frozen=True, slots=True, kw_only=True)
class PastSession:
    """An ended session in which the car drew, as the session history keeps it."""

    #: Unix time of its end.
    ended_at: float
    energy_wh: float
    #: The car was found to take nothing (:class:`IdleCar`) at some time in it: full, or
    #: waiting on a timer of its own.
    car_full: bool


#: How many of a charger's latest sessions a strategy is handed (``StrategyContext.past_sessions``).
PAST_SESSIONS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class SurplusShare:
    """This charger shares the surplus with other chargers (several in pv or minpv).

    The surplus of all of them is this charger's power plus ``others_power_w``
    minus the grid power (then the strategy's own reserve and battery terms);
    ``split`` turns that into this charger's part (W) and a sentence saying why.
    """

    #: What the other sharing chargers draw now (W).
    others_power_w: float
    split: Callable[[float], tuple[float, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyContext:
    """What a strategy sees besides the snapshot."""

    charger_id: str
    #: ``Clock.now()`` of this tick (monotonic: use it for delays and timers).
    now_s: float
    #: ``Clock.wall()`` of this tick (Unix time: use it for times of day and dates).
    wall_s: float
    #: Lowest current the charger may be set to while charging (IEC 61851: 6 A).
    min_current_a: float
    #: Highest current the governor allows now: the lowest of the AMTRON's 32 A,
    #: the device's own maximum, the cable's and the configured fuse limit.
    max_current_a: float
    #: The hardware can switch between 1 and 3 phases.
    phases_switchable: bool
    #: The governor's clock, so a strategy plans with what will really happen:
    #: the earliest time a phase switch it asks for goes through (-inf: now) ...
    phase_switch_at_s: float = float("-inf")
    #: ... and the earliest time a resume goes through after a pause (-inf: now, or not paused).
    resume_at_s: float = float("-inf")
    #: The governor's minimum time between two phase switches of a strategy.
    phase_switch_interval_s: float = 300.0
    #: Set when several chargers share the surplus (None: this charger has it all).
    surplus_share: SurplusShare | None = None
    #: The charger's latest ended sessions in which the car drew, oldest first (at most
    #: ``PAST_SESSIONS``), from the session history, so they outlive a restart; None when no
    #: history is kept (``history.path``).
    past_sessions: tuple[PastSession, ...] | None = None


class Strategy(Protocol):
    """Turns a snapshot into a decision for one charger."""

    @property
    def name(self) -> str:
        """The name it was registered under."""
        ...

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        """Return a :class:`~surplus.types.Decision` with ``source=Source.STRATEGY``.

        No I/O, no clock reads (use ``ctx.now_s``), no mutation of the snapshot; the
        strategy's own state may change (one instance per charger).
        """
        ...


#: ``options -> strategy``. Raise :class:`surplus.options.OptionError` (a
#: ``ValueError``) naming the bad option; do no I/O.
StrategyFactory = Callable[[Mapping[str, Any]], Strategy]


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyInfo:
    """What a strategy says about itself when it registers (``register(name, factory, ...)``).

    The mode list, ``setMode``'s choices, the meter check of the config and the
    metrics' mode labels all come from these, so a third-party strategy is a mode
    like the built-in ones.
    """

    name: str
    #: The plugin that registered it.
    plugin: str = ""
    #: It charges from the grid meter's surplus: without a meter it cannot run.
    needs_meter: bool = False
    #: It reads the grid meter when there is one (always so when ``needs_meter``): a meter
    #: that is down degrades it (``health``), where a mode that never reads one runs as usual.
    uses_meter: bool = False
    #: One line for ``surplus plugins`` and ``rpc.discover``.
    summary: str = ""
    #: Its options and their defaults (None: no default).
    options: Mapping[str, Any] = field(default_factory=dict)
