"""Meter type "fronius": a Fronius inverter's Solar API v1 power flow (Symo, GEN24, Tauro, ...).

``GET http://{host}:{port}/solar_api/v1/GetPowerFlowRealtimeData.fcgi`` and read
``Body.Data.Site`` (all in W):

- ``P_Grid``: + from the grid, - to the grid; ``null`` when no smart meter is
  enabled (then the reading fails: without it there is no surplus to follow).
- ``P_PV``: PV production; ``null`` while the inverter is not running (night),
  read as 0.
- ``P_Akku``: the battery, + discharge / - charge in practice; ``null`` when no
  battery is active (read as "no battery"). Our ``battery_power_w`` is the
  negation (+ = charging).
- ``P_Load``: the consumers, negative (+ generator, - consumer); it includes
  a wallbox behind the grid meter, so ``house_power_w = -P_Load - chargers``.

and ``Body.Data.Inverters.<n>.SOC``: a hybrid inverter's battery state of charge
in percent (the first inverter that reports one), as ``battery_soc_pct``.

A non-zero ``Head.Status.Code`` is an error carrying the device's ``Reason``.

Sources relied on (read for facts, no code taken): the Fronius Solar API V1
operating instructions (42,0410,2012) as quoted in client libraries, e.g. the
``Site`` field comments "This value is null if no meter is enabled (+ from grid,
- to grid)", "(+ generator, - consumer)", "null if inverter is not running";
openHAB issue openhab/openhab-addons#15074, which found the manual's
"P_Akku + charge, - discharge" upside down on a Symo Hybrid (negative while
charging; the binding's docs now say "+ discharge, - charge");
simonhac/FroniusPusher FRONIUS.md (GEN24: "P_Grid +import/-export",
"P_Akku +discharge/-charge"); captured responses in netdata's fronius collector
README and other projects (``"P_Akku": null`` without a battery, ``P_PV`` null
at night, and ``P_Load = -(P_Grid + P_PV + P_Akku)``); evcc's
fronius-solarapi-v1 template (reads ``P_Grid``/``P_PV``/``P_Akku`` and maps
``null`` to 0).

Options: ``host`` (required), ``port`` (80), ``timeout_s`` (2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from surplus.hookspecs import RegisterMeter, hookimpl
from surplus.meter import Meter, MeterEnv
from surplus.options import check_known
from surplus.types import MeterReading

from .http_poll import JsonPoller, device_url, house_without_chargers, timeout_option

POWER_FLOW_PATH = "/solar_api/v1/GetPowerFlowRealtimeData.fcgi"
_SITE = ("Body", "Data", "Site")
P_GRID = (*_SITE, "P_Grid")
P_PV = (*_SITE, "P_PV")
P_AKKU = (*_SITE, "P_Akku")
P_LOAD = (*_SITE, "P_Load")


class FroniusMeter:
    """A Fronius power-flow reading per ``read()``; see the module docstring."""

    def __init__(self, meter_id: str, env: MeterEnv, poller: JsonPoller) -> None:
        self.meter_id = meter_id
        self._env = env
        self._http = poller

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    def _check_status(self, doc: Any) -> None:
        head = doc.get("Head") if isinstance(doc, Mapping) else None
        status = head.get("Status") if isinstance(head, Mapping) else None
        if not isinstance(status, Mapping):
            return  # older firmware may omit the header; the fields decide
        code = status.get("Code", 0)
        if code not in (0, None):
            reason = status.get("Reason") or status.get("UserMessage") or "no reason given"
            raise self._http.error(f"device status {code}: {reason}")

    async def read(self) -> MeterReading:
        doc = await self._http.get_json()
        self._check_status(doc)
        grid = self._http.number(doc, P_GRID)
        assert grid is not None
        pv = self._http.number(doc, P_PV, null_ok=True)
        akku = self._http.number(doc, P_AKKU, null_ok=True)
        load = self._http.number(doc, P_LOAD, null_ok=True)
        return MeterReading(
            battery_soc_pct=_battery_soc(doc),
            meter_id=self.meter_id,
            read_at_s=self._env.clock.now(),
            grid_power_w=round(grid, 1),
            pv_power_w=round(pv, 1) if pv is not None else 0.0,
            house_power_w=house_without_chargers(self._env, -load if load is not None else None),
            battery_power_w=round(-akku, 1) if akku is not None else None,
        )


def _battery_soc(doc: Any) -> float | None:
    """The first ``Body.Data.Inverters.<n>.SOC`` that is a number in 0..100, else None."""
    body = doc.get("Body") if isinstance(doc, Mapping) else None
    data = body.get("Data") if isinstance(body, Mapping) else None
    inverters = data.get("Inverters") if isinstance(data, Mapping) else None
    if not isinstance(inverters, Mapping):
        return None
    for inverter in inverters.values():
        soc = inverter.get("SOC") if isinstance(inverter, Mapping) else None
        if isinstance(soc, (int, float)) and not isinstance(soc, bool) and 0 <= soc <= 100:
            return round(float(soc), 1)
    return None


def make_fronius(meter_id: str, options: Mapping[str, Any], env: MeterEnv) -> Meter:
    """Build a Fronius Solar API meter (validates options; no I/O)."""
    check_known(options, ("host", "port", "timeout_s"))
    url = device_url(options, POWER_FLOW_PATH)
    return FroniusMeter(meter_id, env, JsonPoller(meter_id, url, timeout_s=timeout_option(options)))


@hookimpl
def surplus_register_meters(register: RegisterMeter) -> None:
    register(
        "fronius",
        make_fronius,
        summary="Fronius inverter's Solar API (power flow: grid, PV, battery, house)",
        options={"host": None, "port": 80, "timeout_s": 2.0},
    )
