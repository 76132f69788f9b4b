"""A small in-memory ControllerAPI for RPC tests, built from real surplus types."""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from surplus.api import ChargerSetup, DecisionRecord, LineStatus, Override, PluginInfo
from surplus.clock import FakeClock
from surplus.state import ChargerView, LoopState
from surplus.types import (
    ChargerReading,
    ChargerState,
    Command,
    Decision,
    MeterReading,
    Outcome,
    Snapshot,
    Source,
    Verdict,
)
from tests.factories import charger_state
from tests.waiting import eventually

#: The built-in strategies, as a controller with the default plugins has them.
BUILTIN_MODES = ("off", "fixed", "pv", "minpv", "schedule")


def make_state(charger_id: str = "wb1", read_at_s: float = 1000.0, **changes: Any) -> ChargerState:
    """A charging AMTRON with the numbers of the Node README's examples."""
    return charger_state(charger_id, read_at_s, **changes)


@dataclass
class FakeController:
    """ControllerAPI with a fixed snapshot; set_override records calls and returns ``next_verdict``."""

    clock: FakeClock = field(default_factory=FakeClock)
    started_at_s: float = 900.0
    ids: tuple[str, ...] = ("wb1",)
    state: ChargerState | None = field(default_factory=make_state)
    age_s: float = 1.0
    connected: bool = True
    next_verdict: Verdict = field(
        default_factory=lambda: Verdict(
            outcome=Outcome.APPLIED, command=Command(charger_id="wb1", current_a=16.0)
        )
    )
    raise_on_override: BaseException | None = None
    overrides: list[tuple[str, Override]] = field(default_factory=list)
    current_override: dict[str, Override] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=lambda: {"wb1": "pv"})
    decision: DecisionRecord | None = None
    #: The snapshot's meters (default: one fresh "grid" meter exporting 2.5 kW).
    meter_readings: dict[str, MeterReading] = field(
        default_factory=lambda: {
            "grid": MeterReading(meter_id="grid", read_at_s=999.0, grid_power_w=-2500.0, pv_power_w=8000.0)
        }
    )

    @property
    def charger_ids(self) -> Sequence[str]:
        return self.ids

    def published(self) -> LoopState:
        """The fields above as one state (no loop of its own: no tick or verdict counters)."""
        return LoopState(
            snapshot=self.snapshot(),
            chargers={
                cid: ChargerView(
                    charger_id=cid,
                    mode=self.get_mode(cid),
                    override=self.get_override(cid),
                    decision=self.last_decision(cid),
                )
                for cid in self.ids
            },
        )

    def snapshot(self) -> Snapshot:
        chargers = {}
        if self.state is not None or self.age_s != math.inf:
            chargers[self.ids[0]] = ChargerReading(
                charger_id=self.ids[0], state=self.state, age_s=self.age_s, connected=self.connected
            )
        return Snapshot(
            at_s=self.clock.now(),
            chargers=MappingProxyType(chargers),
            meters=MappingProxyType(dict(self.meter_readings)),
        )

    def get_mode(self, charger_id: str) -> str:
        return self.modes[charger_id]

    @property
    def available_modes(self) -> tuple[str, ...]:
        return BUILTIN_MODES

    @property
    def modes_reading_meter(self) -> frozenset[str]:
        return frozenset({"pv", "minpv", "schedule"})

    def lines(self) -> dict[str, LineStatus]:
        return {"line1": LineStatus(connected=True, load=0.123456)}

    def charger_setup(self, charger_id: str) -> ChargerSetup:
        return ChargerSetup(charger_id=charger_id, circuits=("garage", "site"), priority=2)

    def set_mode(self, charger_id: str, mode: str) -> None:
        if mode not in BUILTIN_MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "schedule":
            raise ValueError("mode schedule needs a schedule in the config")
        self.modes[charger_id] = mode

    async def set_override(self, charger_id: str, override: Override) -> Verdict:
        if self.raise_on_override is not None:
            raise self.raise_on_override
        self.overrides.append((charger_id, override))
        self.current_override[charger_id] = override
        return self.next_verdict

    def clear_override(self, charger_id: str) -> bool:
        return self.current_override.pop(charger_id, None) is not None

    def get_override(self, charger_id: str) -> Override | None:
        return self.current_override.get(charger_id)

    def last_decision(self, charger_id: str) -> DecisionRecord | None:
        return self.decision

    def meters(self) -> Mapping[str, MeterReading]:
        return self.snapshot().meters

    def plugins(self) -> Sequence[PluginInfo]:
        return [PluginInfo(name="fixed", source="built-in", provides=("strategy:fixed",))]


def sample_decision() -> DecisionRecord:
    """A decision record like the loop keeps."""
    return DecisionRecord(
        at_s=995.0,
        decision=Decision(
            charger_id="wb1", source=Source.STRATEGY, charge=True, current_a=10.0, reason="surplus 7 kW"
        ),
        verdict=Verdict(
            outcome=Outcome.SCHEDULED,
            command=Command(charger_id="wb1", current_a=10.0),
            reasons=("5 s spacing",),
            retry_at_s=1002.0,
        ),
        strategy="pv",
        mode="pv",
        override=None,
        grid_power_w=-2500.0,
        charger_age_s=0.5,
    )


STACK_CONFIG = """\
bus:
  port: sim
heartbeat:
  interval_s: 3
control:
  tick_s: 0.5
  stale_after_s: 10
chargers:
  - id: wallbox
    device_id: 50
    mode: fixed
    strategies:
      fixed: {current_a: 10}
    limits: {fuse_limit_a: 32, soft_pause_a: 1.0, pause: release}
meters: []
rpc:
  port: 0
"""


@contextlib.asynccontextmanager
async def full_stack(config_text: str = STACK_CONFIG) -> AsyncIterator[tuple[Any, Any, str]]:
    """The real stack (simulator over RTU-over-TCP, bus, driver, governor, loop, RPC) on the system clock.

    Yields ``(stack, model, url)`` once the charger has been read, with the loop running.
    """
    from surplus.clock import SystemClock
    from surplus.config import load_config
    from surplus.runner import build_stack

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "surplus.yaml"
        path.write_text(config_text)
        config = load_config(str(path), {})
    clock = SystemClock()
    async with build_stack(config, clock=clock) as stack:
        run = asyncio.ensure_future(stack.controller.run())
        try:

            def read() -> bool:
                reading = stack.controller.snapshot().chargers.get("wallbox")
                return reading is not None and reading.state is not None

            def running() -> None:
                assert not run.done(), run

            await eventually(read, "the charger's first reading", 15, meanwhile=running)
            model = stack.simulator.models[50]
            yield stack, model, f"http://127.0.0.1:{stack.web.port}/"
        finally:
            # Hurried: the safe state on shutdown is tested on its own (test_loop); waiting out
            # the 5 s spacing here would cost every test module five seconds.
            stack.controller.stop(hurry=True)
            await asyncio.wait_for(run, 20)
