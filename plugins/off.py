"""Strategy "off": always pause (the configured pause kind: release or soft)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surplus.hookspecs import RegisterStrategy, hookimpl
from surplus.options import check_known
from surplus.strategy import Strategy, StrategyContext
from surplus.types import Decision, Snapshot, Source


@dataclass(frozen=True, slots=True)
class OffStrategy:
    name: str = "off"

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        return Decision(charger_id=ctx.charger_id, source=Source.STRATEGY, charge=False, reason="mode off")


def make_off(options: Mapping[str, Any]) -> Strategy:
    """The "off" strategy takes no options."""
    check_known(options, ())
    return OffStrategy()


@hookimpl
def surplus_register_strategies(register: RegisterStrategy) -> None:
    register("off", make_off, summary="no charging (the box stays paused)")
