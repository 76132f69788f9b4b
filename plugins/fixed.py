"""Strategy "fixed": charge at one configured current, whatever the sun does.

Options: ``current_a`` (6..32 A, default 16) and ``phases`` (1, 3 or null =
leave the phases alone; ignored on hardware that cannot switch).

With no car connected the charger stays released at the fixed current, so a car
that plugs in starts charging at once (the AMTRON draws nothing while no EV is
connected, so there is nothing to save by pausing). The governor still caps the
current at the fuse, cable and device limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surplus.hookspecs import RegisterStrategy, hookimpl
from surplus.options import check_known, choice, number
from surplus.strategy import Strategy, StrategyContext
from surplus.types import MAX_CURRENT_A, MIN_CURRENT_A, Decision, Snapshot, Source


@dataclass(frozen=True, slots=True)
class FixedStrategy:
    current_a: float = 16.0
    phases: int | None = None
    name: str = "fixed"

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        current_a = min(self.current_a, ctx.max_current_a)
        reason = f"fixed {self.current_a:g} A"
        if current_a < self.current_a:
            reason += f" (the device allows {ctx.max_current_a:g} A)"
        return Decision(
            charger_id=ctx.charger_id,
            source=Source.STRATEGY,
            charge=True,
            current_a=current_a,
            phases=self.phases if ctx.phases_switchable else None,
            reason=reason,
        )


def make_fixed(options: Mapping[str, Any]) -> Strategy:
    """Build the strategy from its options (validated here, once)."""
    check_known(options, ("current_a", "phases"))
    return FixedStrategy(
        current_a=number(options, "current_a", 16.0, lo=MIN_CURRENT_A, hi=MAX_CURRENT_A, unit="A"),
        phases=choice(options, "phases", None, (1, 3, None)),
    )


@hookimpl
def surplus_register_strategies(register: RegisterStrategy) -> None:
    register(
        "fixed",
        make_fixed,
        summary="one configured current, whatever the sun does",
        options={"current_a": 16.0, "phases": None},
    )
