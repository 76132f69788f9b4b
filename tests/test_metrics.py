"""/metrics: the latest snapshot in Prometheus text format, scraped over real HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from surplus.metrics import CHARGER_METRICS

from .rpc_support import full_stack

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_serve_the_snapshot_without_touching_the_bus() -> None:
    async with full_stack() as (stack, model, url), aiohttp.ClientSession() as session:
        await asyncio.sleep(1.5)  # a tick or two: the fixed strategy's setpoint is sent
        reads_before = model.record.reads
        async with session.get(url + "metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        scrape_reads = model.record.reads - reads_before
        got = samples(text)
        state = stack.controller.snapshot().chargers["wallbox"].state
        assert state is not None
        charger = (("charger", "wallbox"),)
        assert got[("surplus_charger_connected", charger)] == 1.0
        assert got[("surplus_charger_current_limit_amperes", charger)] == pytest.approx(state.current_limit_a)
        assert got[("surplus_charger_evse_state", charger)] == state.evse_state
        assert got[("surplus_charger_voltage_volts", (("charger", "wallbox"), ("phase", "L1")))] > 200
        assert got[("surplus_charger_energy_wh_total", charger)] == pytest.approx(state.energy_total_wh)
        assert 0 <= got[("surplus_charger_data_age_seconds", charger)] < 5
        assert (
            got[("surplus_decision_current_amperes", (("charger", "wallbox"), ("source", "strategy")))] == 10
        )
        for row in CHARGER_METRICS:  # every table row is exported
            assert any(name == f"surplus_charger_{row.name}" for name, _ in got)
        # Scrapes read the snapshot, not the bus: 50 more scrapes cost no Modbus reads beyond
        # the loop's own (about 9 per 1 s tick), where a bus read per scrape would be 50 or more.
        before = model.record.reads
        for _ in range(50):
            async with session.get(url + "metrics") as resp:
                assert resp.status == 200
        assert scrape_reads + model.record.reads - before < 40
