"""A real Prometheus scrapes the full stack's /metrics; the Grafana dashboard's queries run against it.

One Prometheus per module (scrape every 1 s, 127.0.0.1 only). The dashboard's
structure is checked offline (Grafana itself is not packaged for Debian), and
every PromQL ``expr`` in it is evaluated by the real Prometheus, so a typo in a
metric name or in the PromQL fails here.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from .prometheus_support import Prometheus, prometheus
from .rpc_support import full_stack
from .test_metrics import METER_STACK

DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana-dashboard.json"
module_loop = pytest.mark.asyncio(loop_scope="module")

#: What the test puts in for Grafana's variables (one charger and one meter in the stack).
VARIABLES = {
    "$__rate_interval": "10s",
    "$__interval": "2s",
    "$__range": "5m",
    "${charger}": "wallbox",
    "$charger": "wallbox",
    "${meter}": "home",
    "$meter": "home",
}
#: Series the simulated stack cannot have: its meter has no battery, and fixed mode leaves phases
#: alone and reports no figures (test_metrics scrapes pv's).
MAY_BE_EMPTY = {
    "surplus_meter_battery_power_watts",
    "surplus_decision_phases",
    "surplus_strategy_surplus_watts",
    "surplus_strategy_grid_meter_lag_seconds",
    "surplus_strategy_import_weight",
}


@dataclass
class Scraped:
    stack: Any
    model: Any
    prom: Prometheus
    session: aiohttp.ClientSession
    url: str

    async def value(self, expr: str) -> float:
        """The single sample ``expr`` evaluates to."""
        result = await self.prom.vector(self.session, expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scraped(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scraped]:
    async with full_stack(METER_STACK) as (stack, model, url):
        workdir = tmp_path_factory.mktemp("prometheus")
        async with (
            prometheus(f"127.0.0.1:{stack.web.port}", workdir) as prom,
            aiohttp.ClientSession() as session,
        ):
            # Three stored scrapes: enough for rate() and increase() in the dashboard's queries.
            await prom.wait_for(session, "count_over_time(surplus_ticks_total[1m]) >= 3")
            yield Scraped(stack, model, prom, session, url)


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in all_panels(load_dashboard()["panels"]) for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


@module_loop
async def test_prometheus_stores_what_the_controller_holds(scraped: Scraped) -> None:
    s = scraped
    assert await s.value('up{job="surplus"}') == 1
    # The wallbox's EM current register, through Modbus, the snapshot, /metrics and Prometheus.
    limit = await s.value('surplus_charger_current_limit_amperes{charger="wallbox"}')
    assert limit == s.model.em_current_a == 10
    assert await s.value('surplus_charger_mode{charger="wallbox", mode="fixed"}') == 1
    assert await s.value('sum(surplus_charger_mode{charger="wallbox"})') == 1
    # Counters only grow: Prometheus's last sample is at most one scrape behind the controller.
    ticks = await s.value("surplus_ticks_total")
    assert s.stack.controller.ticks - 6 <= ticks <= s.stack.controller.ticks
    energy_j = await s.value('surplus_charger_energy_joules_total{charger="wallbox"}')
    assert 0 <= s.model.energy_total_wh * 3600 - energy_j <= 3 * 22_000  # < 3 s at most 22 kW
    on_bus = '{bus="bus"}'
    assert 0 < await s.value(f"surplus_bus_transactions_total{on_bus}") <= s.stack.buses[0].stats.transactions
    assert await s.value(f"surplus_bus_errors_total{on_bus}") == 0
    assert 0 < await s.value("max(surplus_bus_heartbeat_gap_max_seconds)") < 10
    assert await s.value('surplus_governor_verdicts_total{charger="wallbox", outcome="refused"}') == 0
    # PromQL on top: the surplus equals car power minus grid power at the same scrape.
    assert await s.value(
        "abs(sum(surplus_available_power_watts) - (sum(surplus_charger_power_watts) - sum(surplus_meter_grid_power_watts)))"
    ) == pytest.approx(0, abs=1e-6)


def test_dashboard_is_importable_grafana_json() -> None:
    d = load_dashboard()
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"])
    panels = list(all_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), "panel ids must be unique"
    known = {"row", "stat", "timeseries", "state-timeline", "gauge", "table", "bargauge", "text"}
    boxes = []
    for p in panels:
        assert p["type"] in known, p["type"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and 0 <= g["x"] and g["x"] + g["w"] <= 24, p[
            "title"
        ]
        boxes.append((g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"], p["title"]))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]
    for a, b in itertools.combinations(boxes, 2):  # panels must not overlap on the grid
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a[4], b[4])
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("charger", "meter"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"]
        assert f"label_values(surplus_{name}" in variables[name]["definition"]
    # No free text in labels: decision reasons are not exported.
    legends = [t.get("legendFormat", "") for p in panels for t in p.get("targets", [])]
    assert not any("reason" in text for text in (*dashboard_exprs(), *legends))


@module_loop
async def test_every_dashboard_query_runs_on_prometheus(scraped: Scraped) -> None:
    s = scraped
    async with s.session.get(s.url + "metrics") as resp:
        exported = set(re.findall(r"^# TYPE (\S+) ", await resp.text(), flags=re.MULTILINE))
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    empty = []
    for expr in exprs:
        used = set(re.findall(r"\bsurplus_[a-z_]+", expr))
        assert used and used <= exported, f"{expr!r} uses metrics /metrics does not export: {used - exported}"
        body = await s.prom.query(s.session, substitute(expr))
        assert body["status"] == "success", (expr, body)
        if not body["data"]["result"]:
            empty.append((expr, used))
    unexpected = [expr for expr, used in empty if not used & MAY_BE_EMPTY]
    assert not unexpected, f"dashboard queries without data: {unexpected}"
    assert len(empty) <= len(MAY_BE_EMPTY)


@module_loop
async def test_dashboard_variables_find_the_charger_and_meter(scraped: Scraped) -> None:
    for v in load_dashboard()["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", v.get("definition", ""))
        if m is None:
            continue
        metric, label = m.groups()
        values = {r["metric"][label] for r in await scraped.prom.vector(scraped.session, metric)}
        assert values == {"charger": {"wallbox"}, "meter": {"home"}}[v["name"]]


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-fleet.yml"])
def test_the_shipped_prometheus_configs_pass_promtool(name: str) -> None:
    """The single-site scrape config and the several-sites one (direct scrapes and federation)."""
    import subprocess

    from .prometheus_support import require

    path = DASHBOARD.parent / name
    done = subprocess.run(
        [require("promtool"), "check", "config", str(path)], capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    assert b"SUCCESS" in done.stdout + done.stderr
