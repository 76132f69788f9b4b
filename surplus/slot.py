"""One charger's mutable record, shared by the coordinator (its readings) and its control
(mode, override, decisions). Nothing outside the loop's modules sees it: readers get the
frozen :class:`surplus.state.ChargerView` published from it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .chargers.base import Charger
from .state import ChargerView, DecisionRecord, Override
from .strategy import Strategy
from .types import ChargerReading, Outcome


@dataclass(slots=True)
class ChargerSlot:
    """One charger and everything the loop keeps for it."""

    charger: Charger
    #: Strategy instances by mode name ("fixed", "pv", ...); "off" pauses.
    strategies: Mapping[str, Strategy]
    mode: str
    #: "hold_min" or "pause": what to do when the strategy or the data fails.
    fallback: str = "pause"
    #: Sharing the surplus with other chargers: a higher number is served first.
    priority: int = 1
    reading: ChargerReading | None = None
    override: Override | None = None
    last_record: DecisionRecord | None = None
    last_full_read_s: float = -math.inf
    started: bool = False
    #: Set while the strategy keeps failing, so the failure is logged once.
    strategy_error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: When the mode and the override were set (``Clock.now()``; -inf: configured).
    mode_at_s: float = -math.inf
    override_at_s: float | None = None
    #: Governed decisions by verdict, and commands written, since start-up.
    verdicts: dict[Outcome, int] = field(default_factory=dict)
    writes: int = 0

    #: The charger's id (kept here: it is asked for many times a tick).
    charger_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.charger_id = self.charger.charger_id

    def view(self) -> ChargerView:
        """The frozen view of this charger's control state."""
        return ChargerView(
            charger_id=self.charger_id,
            mode=self.mode,
            mode_at_s=self.mode_at_s,
            override=self.override,
            override_at_s=None if self.override is None else self.override_at_s,
            decision=self.last_record,
            verdicts=MappingProxyType(dict(self.verdicts)),
            writes=self.writes,
        )


def why(slot: ChargerSlot, exc: BaseException) -> str:
    """The error text without a repeated "<charger id>: " prefix (driver errors carry it)."""
    text = str(exc)
    prefix = f"{slot.charger_id}: "
    return text[len(prefix) :] if text.startswith(prefix) else text
