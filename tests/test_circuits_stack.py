"""Circuits over the real stack: four simulated boxes on two RTU-over-TCP lines (a simulator and a
bus owner each), the real driver, governor and loop on the system clock; the simulated boxes never
exceed a circuit on any phase."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surplus.api import Override
from surplus.clock import SystemClock
from surplus.config import load_config, to_circuits
from surplus.runner import build_stack

from .loop_support import assert_governor_rules_held
from .test_circuits import assert_within_circuits

pytestmark = pytest.mark.integration

CONFIG = """\
buses:
  - {id: line1, port: sim}
  - {id: line2, port: sim}
circuits:
  - {id: site, limit_a: 32}
  - {id: garage, limit_a: 16, parent: site}
chargers:
  - {id: a, bus: line1, device_id: 10, circuit: garage, mode: fixed, strategies: {fixed: {current_a: 12}}}
  - {id: b, bus: line1, device_id: 11, circuit: garage, phase_rotation: [L2, L3, L1], mode: fixed,
     strategies: {fixed: {current_a: 12}}}
  - {id: c, bus: line2, device_id: 12, circuit: site, phase_rotation: [L3, L1, L2], mode: fixed,
     strategies: {fixed: {current_a: 10}}}
  - {id: d, bus: line2, device_id: 13, circuit: site, mode: fixed, strategies: {fixed: {current_a: 14}}}
meters: []
"""


async def test_four_boxes_on_two_lines_never_exceed_a_circuit(tmp_path: Path) -> None:
    path = tmp_path / "carpark.yaml"
    path.write_text(CONFIG)
    config = load_config(str(path), {})
    tree = to_circuits(config)
    assert tree is not None
    clock = SystemClock()
    async with build_stack(config, clock=clock, rpc=False) as stack:
        ctl = stack.controller
        assert len(stack.buses) == 2 and len(stack.simulators) == 2
        line1, line2 = (sim.models for sim in stack.simulators)
        assert (sorted(line1), sorted(line2)) == ([10, 11], [12, 13])  # each line serves its own boxes
        models = {"a": line1[10], "b": line1[11], "c": line2[12], "d": line2[13]}
        samples: list[dict[str, float]] = []
        run = asyncio.ensure_future(ctl.run())
        try:

            async def until(what: str, ok: object, limit_s: float = 15.0) -> None:
                deadline = clock.now() + limit_s
                while not ok():  # type: ignore[operator]
                    assert clock.now() < deadline, f"not reached in {limit_s:g} s: {what}"
                    assert not run.done(), run
                    assert_within_circuits(tree, models, samples)
                    await asyncio.sleep(0.05)
                assert_within_circuits(tree, models, samples)

            await until("a, c and d charge", lambda: all(models[c].charging_current_a > 0 for c in "acd"))
            await until("d at the site's last 10 A", lambda: models["d"].em_current_a == 10.0)
            assert models["b"].charging_current_a == 0  # the site has nothing left for b
            # A person turns a down; then asks b for 16 A: the circuits give b what they leave.
            verdict = await ctl.set_override("a", Override(current_a=6.0, reason="person"))
            assert verdict.outcome.value in ("applied", "scheduled")
            await until("a at 6 A", lambda: models["a"].charging_current_a == 6.0)
            await ctl.set_override("b", Override(current_a=16.0, reason="person"))
            await until("b charges at the site's 6 A", lambda: models["b"].charging_current_a == 6.0)
            decision = ctl.last_decision("b")
            assert decision is not None and "circuit site: 6.0 A left" in decision.decision.reason
            # Line 2 goes silent (c and d unreachable): they count at what they were set to, so b
            # (asking for 16 A) gets nothing more although the garage alone would allow it 10 A.
            stack.simulators[1].faults.silent = True
            quiet_until = clock.now() + 7.0  # longer than the 5 s spacing b's raise would wait
            while clock.now() < quiet_until:
                assert_within_circuits(tree, models, samples)
                assert models["b"].em_current_a <= 6.0 + 1e-9, "b was raised while c and d were unreachable"
                await asyncio.sleep(0.1)

            def age(cid: str) -> float:
                state = ctl.snapshot().chargers[cid].state
                return clock.now() - state.read_at_s if state is not None else float("inf")

            assert age("c") > 3.0 and age("d") > 3.0  # the loop had really lost them
            stack.simulators[1].faults.silent = False
            await until("c and d answer again", lambda: age("c") < 2.0 and age("d") < 2.0)
            # c stops: b may take the garage's rest (a 5 s spacing later), d its own 14 A.
            ctl.set_mode("c", "off")
            await until("b at the garage's 10 A", lambda: models["b"].charging_current_a == 10.0, 20.0)
            await until("d at its 14 A", lambda: models["d"].charging_current_a == 14.0, 20.0)
        finally:
            ctl.stop(hurry=True)  # the safe state on shutdown is tested elsewhere
            await asyncio.wait_for(run, 20)
        for cid, m in models.items():
            assert_governor_rules_held(m.record)
            if cid in "ab":  # line 2 (c, d) was silent on purpose
                assert m.record.worst_heartbeat_gap_s < 5.0
        assert max(s.get("garage.L1", 0.0) for s in samples) == pytest.approx(16.0, abs=0.01)
        assert max(s.get("site.L1", 0.0) for s in samples) == pytest.approx(32.0, abs=0.01)
