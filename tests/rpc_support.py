"""A small in-memory ControllerAPI for RPC tests, built from real surplus types."""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from surplus.api import MODES, DecisionRecord, Override, PluginInfo
from surplus.clock import FakeClock
from surplus.types import (
    Capabilities,
    ChargerConfig,
    ChargerReading,
    ChargerState,
    Command,
    Decision,
    DeviceInfo,
    MeterReading,
    Outcome,
    Snapshot,
    Source,
    Verdict,
)


def make_state(charger_id: str = "wb1", read_at_s: float = 1000.0, **changes: Any) -> ChargerState:
    """A charging AMTRON with the numbers of the Node README's examples."""
    state = ChargerState(
        charger_id=charger_id,
        read_at_s=read_at_s,
        info=DeviceInfo(
            layout_version=0x0103,
            firmware_version="2.0",
            serial_number="ABC123456",
            article_number="1234567",
            device_id=50,
        ),
        config=ChargerConfig(
            downgrade_current_a=16.0,
            max_current_house_a=32.0,
            max_current_evse_a=32.0,
            phase_switching_mode=2,
            phase_options_hw=2,
            cable_lock_setting=False,
            master_lost_fallback_current_a=0,
            grid_imbalance=False,
            grid_imbalance_threshold_a=16,
            grid_phases_connected=2,
            authorization_enabled=False,
            solar_min_current_a=6,
            phase_switching_pause_s=30,
        ),
        capabilities=Capabilities(
            phase_switching=True,
            max_current_a=32.0,
            grid_phases=3,
            exact_6a_rejected=False,
            phase_switch_pause_s=30.0,
        ),
        evse_state=5,
        cp_state=28,
        authorization_status=1,
        downgrade_status=1,
        phase_rotation=0,
        signaled_current_a=16.0,
        current_limit_a=16.0,
        current_l1_a=15.2,
        current_l2_a=15.1,
        current_l3_a=15.3,
        voltage_l1_v=230.5,
        voltage_l2_v=231.0,
        voltage_l3_v=229.8,
        power_l1_w=3502.6,
        power_l2_w=3488.1,
        power_l3_w=3511.9,
        power_total_w=10502.6,
        temperature_c=42.5,
        session_max_current_a=16.0,
        session_energy_wh=5234.0,
        session_duration_s=1823,
        detected_phases=3,
        energy_total_wh=1234567.0,
        sessions_total=156,
        cable_lock_status=1,
        solar_charging_mode=0,
        requested_phases=0,
        charging_release=True,
        locked=False,
        error_code=0,
        master_lost_fallback=False,
        switched_phases=0,
    )
    return replace(state, **changes)


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

    @property
    def charger_ids(self) -> Sequence[str]:
        return self.ids

    def snapshot(self) -> Snapshot:
        chargers = {}
        if self.state is not None or self.age_s != math.inf:
            chargers[self.ids[0]] = ChargerReading(
                charger_id=self.ids[0], state=self.state, age_s=self.age_s, connected=self.connected
            )
        meters = {
            "grid": MeterReading(meter_id="grid", read_at_s=999.0, grid_power_w=-2500.0, pv_power_w=8000.0)
        }
        return Snapshot(
            at_s=self.clock.now(), chargers=MappingProxyType(chargers), meters=MappingProxyType(meters)
        )

    def get_mode(self, charger_id: str) -> str:
        return self.modes[charger_id]

    def set_mode(self, charger_id: str, mode: str) -> None:
        if mode not in MODES:
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
            deadline = clock.now() + 15
            while True:
                reading = stack.controller.snapshot().chargers.get("wallbox")
                if reading is not None and reading.state is not None:
                    break
                assert clock.now() < deadline, "the charger was never read"
                assert not run.done(), run
                await asyncio.sleep(0.05)
            model = stack.simulator.models[50]
            yield stack, model, f"http://127.0.0.1:{stack.web.port}/"
        finally:
            stack.controller.stop()
            await asyncio.wait_for(run, 20)
