"""/metrics: the controller's in-memory state in Prometheus text format, scraped over real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from surplus.clock import FakeClock
from surplus.metrics import CHARGER_COUNTERS, CHARGER_METRICS, FIGURE_HELP_OTHER, metrics_endpoint
from surplus.types import MeterReading, Outcome, Snapshot

from .prometheus_support import promtool_check_metrics
from .rpc_support import STACK_CONFIG, FakeController, full_stack, sample_decision
from .test_bus import HB_ADDR, HB_VALUE, FakeLink, make_bus
from .test_rpc_stack import Rpc
from .waiting import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: The stack of rpc_support with a simulated PV + house meter, so meter series exist.
METER_STACK = STACK_CONFIG.replace(
    "meters: []",
    "meters:\n  - id: home\n    type: simulated\n    options: {pv_peak_w: 9000, start_hour: 12}",
)


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def names(got: Samples) -> set[str]:
    return {name for name, _ in got}


def render(controller: object, **kwargs: object) -> Samples:
    body, _ = metrics_endpoint(controller, **kwargs)()  # type: ignore[arg-type]
    return samples(body.decode())


CHARGER = (("charger", "wallbox"),)


@pytest.mark.integration
async def test_metrics_serve_the_snapshot_pass_promtool_and_never_touch_the_bus() -> None:
    async with full_stack(METER_STACK) as (stack, model, url), aiohttp.ClientSession() as session:
        await asyncio.sleep(1.5)  # a tick or two: the fixed strategy's setpoint is sent
        reads_before = model.record.reads
        async with session.get(url + "metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        scrape_reads = model.record.reads - reads_before
        got = samples(text)
        ctl = stack.controller
        state = ctl.snapshot().chargers["wallbox"].state
        assert state is not None
        assert got[("surplus_charger_connected", CHARGER)] == 1.0
        assert got[("surplus_charger_current_limit_amperes", CHARGER)] == pytest.approx(state.current_limit_a)
        assert got[("surplus_charger_current_limit_amperes", CHARGER)] == pytest.approx(model.em_current_a)
        assert got[("surplus_charger_evse_state", CHARGER)] == state.evse_state
        assert got[("surplus_charger_voltage_volts", (("charger", "wallbox"), ("phase", "L1")))] > 200
        assert got[("surplus_charger_energy_joules_total", CHARGER)] == pytest.approx(
            state.energy_total_wh * 3600
        )
        assert got[("surplus_charger_sessions_total", CHARGER)] == state.sessions_total
        assert 0 <= got[("surplus_charger_data_age_seconds", CHARGER)] < 5
        group_ages = {
            dict(labels)["group"]: v
            for (n, labels), v in got.items()
            if n == "surplus_charger_read_age_seconds"
        }
        assert set(group_ages) == {"measurements", "control", "configuration"}
        assert group_ages["measurements"] == pytest.approx(got[("surplus_charger_data_age_seconds", CHARGER)])
        assert group_ages["measurements"] <= group_ages["control"] <= group_ages["configuration"]
        assert group_ages["control"] < 6  # read every 5 s (and after every write)
        info = [dict(labels) for (n, labels), v in got.items() if n == "surplus_charger_info" and v == 1]
        assert info == [{"charger": "wallbox", "circuit": "", "circuits": "", "priority": "1"}]  # no circuits
        bus = (("bus", "bus"),)
        assert 0.0 < got[("surplus_bus_load_ratio", bus)] < 0.5  # a second of 1 s ticks on the in-process sim
        assert got[("surplus_bus_busy_seconds_total", bus)] > 0.0
        assert got[("surplus_decision_current_amperes", (*CHARGER, ("source", "strategy")))] == 10
        assert got[("surplus_decision_charge", CHARGER)] == 1
        assert got[("surplus_decision_info", (*CHARGER, ("source", "strategy"), ("strategy", "fixed")))] == 1
        # fixed reports no figures: the built-in families are there, without series.
        assert "# TYPE surplus_strategy_surplus_watts gauge" in text
        assert not any(name.startswith("surplus_strategy_") for name in names(got))
        # Mode: one series per known mode, 1 for the active one.
        modes = {dict(labels)["mode"]: v for (n, labels), v in got.items() if n == "surplus_charger_mode"}
        assert modes["fixed"] == 1 and sum(modes.values()) == 1 and "pv" in modes
        assert got[("surplus_charger_override_active", CHARGER)] == 0
        # The 10 A setpoint was written once; later ticks find it unchanged.
        verdicts = {
            dict(labels)["outcome"]: v
            for (n, labels), v in got.items()
            if n == "surplus_governor_verdicts_total"
        }
        assert set(verdicts) == {o.value for o in Outcome}
        assert verdicts["applied"] >= 1 and verdicts["unchanged"] >= 1 and verdicts["refused"] == 0
        assert got[("surplus_charger_writes_total", CHARGER)] == verdicts["applied"]
        assert 1 <= got[("surplus_ticks_total", ())] <= ctl.ticks
        assert 0 <= got[("surplus_tick_duration_seconds", ())] < 1
        assert 1 < got[("surplus_uptime_seconds", ())] < 30
        # Meters: the simulated meter's reading, fresh.
        home = (("meter", "home"),)
        meter = ctl.snapshot().meters["home"]
        assert got[("surplus_meter_up", home)] == 1
        assert got[("surplus_meter_pv_power_watts", home)] > 0
        assert got[("surplus_meter_house_power_watts", home)] > 0
        assert got[("surplus_meter_grid_power_watts", home)] == pytest.approx(meter.grid_power_w)
        assert got[("surplus_available_power_watts", ())] == pytest.approx(
            state.power_total_w - meter.grid_power_w
        )
        # Bus: counters match the bus's own, the heartbeat runs within the box's 10 s.
        bus = stack.buses[0]
        on_bus = (("bus", "bus"),)
        assert 0 < got[("surplus_bus_transactions_total", on_bus)] <= bus.stats.transactions
        assert got[("surplus_bus_errors_total", on_bus)] == 0
        assert got[("surplus_bus_connected", on_bus)] == 1
        beat = (*on_bus, ("device", "50"))
        assert 0 < got[("surplus_bus_heartbeat_gap_max_seconds", beat)] < 5
        assert 0 <= got[("surplus_bus_heartbeat_age_seconds", beat)] < 5
        for row in (*CHARGER_METRICS, *CHARGER_COUNTERS):  # every table row is exported
            assert any(name.startswith(f"surplus_charger_{row.name}") for name in names(got))
        assert not any(name.endswith("_created") for name in names(got))
        # promtool's lint (names, units, _total, help) passes on a real scrape, silently.
        rc, output = promtool_check_metrics(text)
        assert (rc, output) == (0, ""), output
        # Scrapes read the snapshot, not the bus: 50 more scrapes cost no Modbus reads beyond
        # the loop's own (about 9 per 1 s tick), where a bus read per scrape would be 50 or more.
        before = model.record.reads
        for _ in range(50):
            async with session.get(url + "metrics") as resp:
                assert resp.status == 200
        assert scrape_reads + model.record.reads - before < 40


def _decided_by(controller: Any, strategy: str) -> bool:
    record = controller.last_decision("wallbox")
    return record is not None and record.strategy == strategy


@pytest.mark.integration
async def test_the_strategys_own_figures_are_exported_with_its_decision() -> None:
    # pv reports the surplus it acts on and the grid meter's measured lag with each decision:
    # getDecision gives them with the reason, /metrics as surplus_strategy_<name>{charger}.
    async with full_stack(METER_STACK.replace("mode: fixed", "mode: pv")) as (stack, _model, url):
        async with aiohttp.ClientSession() as session:
            await eventually(
                lambda: _decided_by(stack.controller, "pv"), "the loop's first pv decision", 10.0
            )
            data = (await Rpc(url, session).ok("getDecision"))["data"]
            async with session.get(url + "metrics") as resp:
                text = await resp.text()
    decision = data["decision"]
    assert set(decision["figures"]) == {
        "surplus_watts",
        "surplus_noise_watts",
        "grid_meter_lag_seconds",
        "import_weight",
    }
    assert decision["figures"]["import_weight"] == 3.0  # the default: no session has ended yet
    said = re.search(r"surplus (-?[0-9.]+) kW", decision["reason"])
    assert said is not None and decision["figures"]["surplus_watts"] / 1000 == pytest.approx(
        float(said[1]), abs=0.006
    )
    got = samples(text)
    assert 1000 < got[("surplus_strategy_surplus_watts", CHARGER)] < 9000  # the simulated sun at noon
    assert 0 <= got[("surplus_strategy_grid_meter_lag_seconds", CHARGER)] <= 30
    rc, output = promtool_check_metrics(text)
    assert (rc, output) == (0, ""), output


def test_another_plugins_figures_are_exported_by_name_and_bad_ones_left_out() -> None:
    record = sample_decision()
    figures = (("level_watts", 2300.0), ("Bad-Name", 1.0), ("nan_watts", math.nan), ("level_watts", 2400.0))
    decision = dataclasses.replace(record.decision, figures=figures)
    body, _ = metrics_endpoint(FakeController(decision=dataclasses.replace(record, decision=decision)))()
    text = body.decode()
    wb1 = (("charger", "wb1"),)
    assert samples(text)[("surplus_strategy_level_watts", wb1)] == 2400.0  # the last of a name
    assert f"# HELP surplus_strategy_level_watts {FIGURE_HELP_OTHER}" in text
    assert "nan_watts" not in text and "Bad" not in text
    assert "# TYPE surplus_strategy_grid_meter_lag_seconds gauge" in text  # the built-in ones, empty
    rc, output = promtool_check_metrics(text)
    assert (rc, output) == (0, ""), output


def test_promtool_catches_a_bad_name() -> None:
    """The promtool check can fail: promtool rejects a counter without _total and a non-base unit."""
    rc, output = promtool_check_metrics(
        "# HELP x_energy_watt_hours e\n# TYPE x_energy_watt_hours counter\nx_energy_watt_hours 1\n"
    )
    assert rc != 0 and "x_energy_watt_hours" in output


def test_a_plain_controller_api_gets_the_snapshot_metrics_only() -> None:
    """Without the loop's extras (ticks, observers) and buses, those families are simply absent."""
    fake = FakeController(decision=sample_decision())
    got = render(fake)
    wb1 = (("charger", "wb1"),)
    assert got[("surplus_charger_mode", (*wb1, ("mode", "pv")))] == 1
    assert got[("surplus_decision_current_amperes", (*wb1, ("source", "strategy")))] == 10
    assert got[("surplus_decision_age_seconds", wb1)] == pytest.approx(fake.clock.now() - 995.0)
    assert ("surplus_decision_phases", wb1) not in got  # the decision leaves phases alone
    assert got[("surplus_meter_grid_power_watts", (("meter", "grid"),))] == -2500
    assert not {"surplus_ticks_total", "surplus_governor_verdicts_total", "surplus_bus_errors_total"} & names(
        got
    )


def test_meters_export_every_known_field_and_only_fresh_ones_count_as_up() -> None:
    fake = FakeController()
    readings = {
        "inverter": MeterReading(
            meter_id="inverter",
            read_at_s=999.0,
            grid_power_w=-1200.0,
            pv_power_w=5000.0,
            house_power_w=800.0,
            battery_power_w=-300.0,
            age_s=1.0,
        ),
        "old": MeterReading(meter_id="old", read_at_s=900.0, grid_power_w=50.0, age_s=100.0, error="stale"),
        "never": MeterReading(
            meter_id="never", read_at_s=-math.inf, grid_power_w=math.nan, age_s=math.inf, error="refused"
        ),
    }
    snap = Snapshot(at_s=fake.clock.now(), meters=MappingProxyType(readings))
    fake.snapshot = lambda: snap  # type: ignore[method-assign]
    got = render(fake)
    inv, old = (("meter", "inverter"),), (("meter", "old"),)
    assert got[("surplus_meter_battery_power_watts", inv)] == -300
    assert got[("surplus_meter_house_power_watts", inv)] == 800
    assert (got[("surplus_meter_up", inv)], got[("surplus_meter_up", old)]) == (1, 0)
    assert ("surplus_meter_pv_power_watts", old) not in got
    # Down or never read: up says so, and no power series (no flat line of old values, no NaN in sums).
    never = (("meter", "never"),)
    assert got[("surplus_meter_up", never)] == 0 and ("surplus_meter_age_seconds", never) not in got
    for mid in (old, never):
        assert ("surplus_meter_grid_power_watts", mid) not in got
    assert got[("surplus_meter_age_seconds", old)] == pytest.approx(100, abs=1)
    # One stale meter makes the grid total unknown: no surplus is claimed.
    assert ("surplus_available_power_watts", ()) not in got


async def test_worst_heartbeat_gap_includes_an_outage_and_the_open_gap() -> None:
    clock = FakeClock()
    link = FakeLink(clock)
    bus = await make_bus(clock, link, timeout_s=1.0, retries=0)
    try:
        bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 3.0)
        await clock.advance(10)
        assert bus.worst_heartbeat_gaps()[1] == pytest.approx(3.0 + link.latency_s)
        link.silent.add(1)  # the device stops answering for a while
        await clock.advance(12)
        link.silent.discard(1)
        await clock.advance(8)
        worst = bus.worst_heartbeat_gaps()[1]
        assert 12 <= worst <= 18
        got = render(FakeController(clock=clock), buses=[bus])
        beat = (("bus", "bus"), ("device", "1"))
        assert got[("surplus_bus_heartbeat_gap_max_seconds", beat)] == pytest.approx(worst)
        assert got[("surplus_bus_heartbeat_age_seconds", beat)] < 3.5
        assert got[("surplus_bus_timeouts_total", (("bus", "bus"),))] == bus.stats.timeouts > 0
    finally:
        await bus.close()
