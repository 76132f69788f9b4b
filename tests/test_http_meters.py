"""HTTP meters ("fronius", "shelly", "http") against real aiohttp servers on 127.0.0.1.

The JSON answers follow the documented shapes of each device (written for these
tests, not captured from a real installation): a Fronius Symo GEN24 with a
battery by day, a Symo without a battery at night, a Shelly Pro 3EM
(``EM.GetStatus``) and a Shelly 3EM Gen1 (``/status``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from surplus_plugins.fronius import make_fronius
from surplus_plugins.http_meter import make_http
from surplus_plugins.http_poll import MeterHttpError, shown_url
from surplus_plugins.shelly import make_shelly
from yarl import URL

from surplus.clock import FakeClock
from surplus.meter import Meter, MeterEnv, MeterFactory
from surplus.options import OptionError
from surplus.plugins import collect_meters, make_plugin_manager

pytestmark = pytest.mark.integration

FRONIUS_PATH = "/solar_api/v1/GetPowerFlowRealtimeData.fcgi"

# A GEN24 Plus with a BYD battery at noon: PV 7850 W, the battery charges with
# 1500 W, 1200 W go to the grid, so the consumers (P_Load) draw 5150.2 W.
GEN24_BATTERY_CHARGING = """
{
   "Body" : {
      "Data" : {
         "Inverters" : {
            "1" : {
               "Battery_Mode" : "normal",
               "DT" : 1,
               "E_Day" : null,
               "E_Total" : 8127391.5,
               "E_Year" : null,
               "P" : 6350.2,
               "SOC" : 64.5
            }
         },
         "SecondaryMeters" : {},
         "Site" : {
            "BackupMode" : false,
            "BatteryStandby" : false,
            "E_Day" : null,
            "E_Total" : 8127391.5,
            "E_Year" : null,
            "Meter_Location" : "grid",
            "Mode" : "bidirectional",
            "P_Akku" : -1500.2,
            "P_Grid" : -1200.0,
            "P_Load" : -5150.2,
            "P_PV" : 7850.4,
            "rel_Autonomy" : 100.0,
            "rel_SelfConsumption" : 84.7
         },
         "Smartloads" : { "Ohmpilots" : {} },
         "Version" : "12"
      }
   },
   "Head" : {
      "RequestArguments" : {},
      "Status" : { "Code" : 0, "Reason" : "", "UserMessage" : "" },
      "Timestamp" : "2025-06-21T12:00:01+00:00"
   }
}
"""

# A Symo 8.2 without a battery at night: the inverter sleeps (P_PV null), no
# battery (P_Akku null), the house imports everything.
SYMO_NIGHT_NO_BATTERY = """
{
   "Body" : {
      "Data" : {
         "Inverters" : {},
         "Site" : {
            "E_Day" : null,
            "E_Total" : null,
            "E_Year" : null,
            "Meter_Location" : "grid",
            "Mode" : "meter",
            "P_Akku" : null,
            "P_Grid" : 412.3,
            "P_Load" : -412.3,
            "P_PV" : null,
            "rel_Autonomy" : 0.0,
            "rel_SelfConsumption" : null
         },
         "Version" : "12"
      }
   },
   "Head" : {
      "RequestArguments" : {},
      "Status" : { "Code" : 0, "Reason" : "", "UserMessage" : "" },
      "Timestamp" : "2025-06-21T23:41:37+00:00"
   }
}
"""

# Shelly Pro 3EM, EM.GetStatus?id=0: phase b and c export more than a imports.
PRO3EM_EXPORTING = """
{
  "id": 0,
  "a_current": 4.029, "a_voltage": 236.1, "a_act_power": 951.2, "a_aprt_power": 951.9,
  "a_pf": 1.0, "a_freq": 50.0,
  "b_current": 9.102, "b_voltage": 234.9, "b_act_power": -2130.4, "b_aprt_power": 2137.8,
  "b_pf": -1.0, "b_freq": 50.0,
  "c_current": 4.352, "c_voltage": 235.6, "c_act_power": -1021.1, "c_aprt_power": 1025.3,
  "c_pf": -1.0, "c_freq": 50.0,
  "n_current": null,
  "total_current": 17.483, "total_act_power": -2200.3, "total_aprt_power": 4115.0,
  "user_calibrated_phase": []
}
"""

# Shelly 3EM (Gen1) /status, trimmed to what matters plus some neighbours.
GEN1_3EM_IMPORTING = """
{
  "wifi_sta": {"connected": true, "ssid": "home", "ip": "192.168.1.60", "rssi": -61},
  "cloud": {"enabled": false, "connected": false},
  "mqtt": {"connected": false},
  "time": "12:01", "unixtime": 1750507261, "serial": 4511, "has_update": false,
  "mac": "C45BBE000000",
  "relays": [{"ison": false, "has_timer": false, "timer_started": 0, "timer_duration": 0,
              "timer_remaining": 0, "overpower": false, "is_valid": true, "source": "input"}],
  "emeters": [
    {"power": 1204.6, "pf": 0.98, "current": 5.31, "voltage": 231.4, "is_valid": true,
     "total": 1834021.4, "total_returned": 912005.2},
    {"power": 310.0, "pf": 0.91, "current": 1.49, "voltage": 230.8, "is_valid": true,
     "total": 754120.9, "total_returned": 903311.0},
    {"power": -45.3, "pf": -0.64, "current": 0.31, "voltage": 232.0, "is_valid": true,
     "total": 610554.1, "total_returned": 1201873.6}
  ],
  "total_power": 1469.3,
  "fs_mounted": true,
  "update": {"status": "idle", "has_update": false, "new_version": "20230913-114244/v1.14.0-gcb84623",
             "old_version": "20230913-114244/v1.14.0-gcb84623"},
  "ram_total": 49920, "ram_free": 30820, "fs_size": 233681, "fs_free": 155118, "uptime": 864211
}
"""


# ---------------------------------------------------------------------------- a fake device


class Device:
    """An aiohttp server on 127.0.0.1 serving whatever the test puts in ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.stall = False
        self.check_auth: Callable[[web.Request], web.Response | None] | None = None
        self.port = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def serve(self, path: str, body: str | bytes | dict[str, Any], status: int = 200) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        self.routes[path] = (status, body.encode() if isinstance(body, str) else body)

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path_qs, dict(request.headers)))
        if self.stall:
            await self._release.wait()
        if self.check_auth is not None:
            refused = self.check_auth(request)
            if refused is not None:
                return refused
        found = self.routes.get(request.path_qs) or self.routes.get(request.path)
        if found is None:
            return web.Response(status=404, text="not found")
        status, body = found
        return web.Response(status=status, body=body, content_type="application/json")

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = Device()
    await dev.start()
    yield dev
    await dev.stop()


class Chargers:
    """What the controller would say the wallboxes draw."""

    def __init__(self, watts: float | None = 0.0) -> None:
        self.watts = watts

    def __call__(self) -> float:
        return self.watts  # type: ignore[return-value]  # None on purpose: "no answer yet"


def env(clock: FakeClock | None = None, chargers: Chargers | None = None) -> MeterEnv:
    return MeterEnv(clock=clock or FakeClock(), charger_power_w=chargers)


async def read_once(meter: Meter) -> Any:
    await meter.start()
    try:
        return await meter.read()
    finally:
        await meter.stop()


async def fails_with(meter: Meter) -> str:
    """Read, expect exactly a MeterHttpError, return its message (checked to be one line)."""
    with pytest.raises(MeterHttpError) as info:
        await meter.read()
    message = str(info.value)
    assert "\n" not in message and message.startswith("meter grid: http://127.0.0.1:")
    return message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


# ---------------------------------------------------------------------------- registration


def test_the_plugins_are_built_in_and_register_their_types() -> None:
    meters = collect_meters(make_plugin_manager(load_entrypoints=False))
    assert meters["fronius"] is make_fronius
    assert meters["shelly"] is make_shelly
    assert meters["http"] is make_http


# ---------------------------------------------------------------------------- fronius


async def test_fronius_gen24_battery_charging_signs_and_house_without_wallbox(device: Device) -> None:
    device.serve(FRONIUS_PATH, GEN24_BATTERY_CHARGING)
    clock = FakeClock(start=500.0)
    meter = make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env(clock, Chargers(3680.0)))
    r = await read_once(meter)
    assert r.meter_id == "grid" and r.read_at_s == 500.0
    assert r.grid_power_w == -1200.0  # exporting
    assert r.pv_power_w == 7850.4
    assert r.battery_power_w == 1500.2  # P_Akku -1500.2 = charging = + for us
    assert r.battery_soc_pct == 64.5  # Inverters.1.SOC
    assert r.house_power_w == pytest.approx(5150.2 - 3680.0)
    assert device.seen[0][0] == FRONIUS_PATH


async def test_fronius_battery_discharging_in_the_evening(device: Device) -> None:
    doc = json.loads(GEN24_BATTERY_CHARGING)
    doc["Body"]["Data"]["Site"].update(P_PV=0.0, P_Akku=800.0, P_Grid=20.5, P_Load=-820.5)
    device.serve(FRONIUS_PATH, doc)
    r = await read_once(make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env()))
    assert r.battery_power_w == -800.0
    assert r.grid_power_w == 20.5
    assert r.house_power_w == 820.5


async def test_fronius_symo_at_night_without_battery_nulls(device: Device) -> None:
    device.serve(FRONIUS_PATH, SYMO_NIGHT_NO_BATTERY)
    r = await read_once(make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env()))
    assert r.grid_power_w == 412.3  # importing
    assert r.pv_power_w == 0.0  # null at night
    assert r.battery_power_w is None  # no battery
    assert r.battery_soc_pct is None
    assert r.house_power_w == 412.3


@pytest.mark.parametrize(("charger_w", "house_w"), [(None, 5150.2), (0.0, 5150.2), (9000.0, 0.0)])
async def test_fronius_house_charger_edge_cases(
    device: Device, charger_w: float | None, house_w: float
) -> None:
    device.serve(FRONIUS_PATH, GEN24_BATTERY_CHARGING)
    meter = make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env(None, Chargers(charger_w)))
    assert (await read_once(meter)).house_power_w == pytest.approx(house_w)


async def test_fronius_without_charger_callback(device: Device) -> None:
    device.serve(FRONIUS_PATH, SYMO_NIGHT_NO_BATTERY)
    meter = make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, MeterEnv(clock=FakeClock()))
    assert (await read_once(meter)).house_power_w == 412.3


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda site: site.pop("P_Grid"), "field Body.Data.Site.P_Grid missing"),
        (lambda site: site.update(P_Grid=None), "field Body.Data.Site.P_Grid is null"),
        (lambda site: site.update(P_PV="lots"), "field Body.Data.Site.P_PV is 'lots', not a number"),
        (lambda site: site.update(P_Akku=True), "field Body.Data.Site.P_Akku is True, not a number"),
    ],
)
async def test_fronius_bad_fields(
    device: Device, change: Callable[[dict[str, Any]], Any], expect: str
) -> None:
    doc = json.loads(GEN24_BATTERY_CHARGING)
    change(doc["Body"]["Data"]["Site"])
    device.serve(FRONIUS_PATH, doc)
    meter = make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env())
    await meter.start()
    message = await fails_with(meter)
    await meter.stop()
    assert message == f"meter grid: http://127.0.0.1:{device.port}{FRONIUS_PATH}: {expect}"


async def test_fronius_device_status_error(device: Device) -> None:
    doc = json.loads(SYMO_NIGHT_NO_BATTERY)
    doc["Head"]["Status"] = {"Code": 255, "Reason": "Not implemented", "UserMessage": ""}
    device.serve(FRONIUS_PATH, doc)
    meter = make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env())
    message = await fails_with(meter)
    await meter.stop()
    assert message.endswith(": device status 255: Not implemented")


async def test_fronius_odd_header_is_ignored_fields_decide(device: Device) -> None:
    doc = json.loads(SYMO_NIGHT_NO_BATTERY)
    doc["Head"] = []
    device.serve(FRONIUS_PATH, doc)
    r = await read_once(make_fronius("grid", {"host": "127.0.0.1", "port": device.port}, env()))
    assert r.grid_power_w == 412.3


# ---------------------------------------------------------------------------- shelly


async def test_shelly_pro_3em_exporting(device: Device) -> None:
    device.serve("/rpc/EM.GetStatus?id=0", PRO3EM_EXPORTING)
    r = await read_once(make_shelly("grid", {"host": "127.0.0.1", "port": device.port}, env()))
    assert r.grid_power_w == -2200.3
    assert (r.pv_power_w, r.house_power_w, r.battery_power_w) == (None, None, None)
    assert r.phase_currents_a == (4.029, 9.102, 4.352)  # for a circuit's meter
    assert device.seen[0][0] == "/rpc/EM.GetStatus?id=0"


async def test_shelly_pro_3em_other_em_id(device: Device) -> None:
    device.serve("/rpc/EM.GetStatus?id=1", {"id": 1, "total_act_power": 812.25})
    meter = make_shelly("grid", {"host": "127.0.0.1", "port": device.port, "em_id": 1}, env())
    reading = await read_once(meter)
    assert reading.grid_power_w == 812.2  # rounded to 0.1 W
    assert reading.phase_currents_a is None  # no phase currents in the answer: none passed on


async def test_shelly_gen1_3em_sums_the_phases(device: Device) -> None:
    device.serve("/status", GEN1_3EM_IMPORTING)
    meter = make_shelly("grid", {"host": "127.0.0.1", "port": device.port, "generation": 1}, env())
    r = await read_once(meter)
    assert r.grid_power_w == pytest.approx(1204.6 + 310.0 - 45.3)
    assert r.house_power_w is None
    assert r.phase_currents_a == (5.31, 1.49, 0.31)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (
            lambda d: d["emeters"][2].update(is_valid=False),
            "field emeters.2.is_valid is false (phase 3 not measured)",
        ),
        (lambda d: d["emeters"][1].pop("power"), "field emeters.1.power missing"),
        (lambda d: d.update(emeters=[]), "field emeters is not a list of phases"),
        (lambda d: d.pop("emeters"), "field emeters missing"),
    ],
)
async def test_shelly_gen1_bad_answers(
    device: Device, change: Callable[[dict[str, Any]], Any], expect: str
) -> None:
    doc = json.loads(GEN1_3EM_IMPORTING)
    change(doc)
    device.serve("/status", doc)
    meter = make_shelly("grid", {"host": "127.0.0.1", "port": device.port, "generation": 1}, env())
    message = await fails_with(meter)
    await meter.stop()
    assert message == f"meter grid: http://127.0.0.1:{device.port}/status: {expect}"


async def test_shelly_gen1_basic_auth(device: Device) -> None:
    def check(request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != "Basic YWRtaW46czNjcmV0":  # admin:s3cret
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="shelly"'})
        return None

    device.check_auth = check
    device.serve("/status", GEN1_3EM_IMPORTING)
    options = {"host": "127.0.0.1", "port": device.port, "generation": 1, "password": "s3cret"}
    assert (await read_once(make_shelly("grid", options, env()))).grid_power_w == 1469.3
    wrong = make_shelly("grid", {**options, "password": "wrong-pw"}, env())
    message = await fails_with(wrong)
    await wrong.stop()
    assert message.endswith("/status: HTTP 401 Unauthorized")
    assert "wrong-pw" not in message


def digest_checker(password: str, realm: str = "shellypro3em-c8f09e000000") -> Callable[..., Any]:
    """A Shelly Gen2-style digest check (SHA-256, qop=auth), written from RFC 7616."""
    nonce = "60dc59c6"

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def check(request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header))
        if header.startswith("Digest ") and fields.get("nonce") == nonce:
            ha1 = h(f"{fields['username']}:{realm}:{password}")
            ha2 = h(f"GET:{fields['uri']}")
            want = h(f"{ha1}:{nonce}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{ha2}")
            if fields["username"] == "admin" and fields["response"] == want:
                return None
        challenge = f'Digest qop="auth", realm="{realm}", nonce="{nonce}", algorithm=SHA-256'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    return check


async def test_shelly_gen2_digest_auth(device: Device) -> None:
    device.check_auth = digest_checker("pr0-3em")
    device.serve("/rpc/EM.GetStatus?id=0", PRO3EM_EXPORTING)
    options = {"host": "127.0.0.1", "port": device.port, "password": "pr0-3em"}
    meter = make_shelly("grid", options, env())
    await meter.start()
    assert (await meter.read()).grid_power_w == -2200.3
    assert (await meter.read()).grid_power_w == -2200.3  # the second read reuses the challenge
    await meter.stop()
    wrong = make_shelly("grid", {**options, "password": "nope-nope"}, env())
    message = await fails_with(wrong)
    await wrong.stop()
    assert message.endswith("HTTP 401 Unauthorized") and "nope-nope" not in message


# ---------------------------------------------------------------------------- generic http

GENERIC = {
    "data": {
        "grid": {"power": -1.25},
        "pv": [{"power": 2.0}, {"power": 1.5}],
        "battery": {"power": 0.5},
        "house": {"power": 4.0},
        "night": None,
    }
}


async def test_http_paths_scale_and_signs(device: Device) -> None:
    device.serve("/api/live", GENERIC)
    options = {
        "url": f"http://127.0.0.1:{device.port}/api/live",
        "grid_path": "data.grid.power",
        "pv_path": "data.pv.1.power",
        "battery_path": "data.battery.power",
        "house_path": "data.house.power",
        "scale": 1000,
    }
    r = await read_once(make_http("grid", options, env(None, Chargers(2500.0))))
    assert (r.grid_power_w, r.pv_power_w, r.battery_power_w, r.house_power_w) == (
        -1250.0,
        1500.0,
        500.0,
        4000.0,
    )

    flipped = {**options, "invert_grid": True, "invert_battery": True, "house_includes_chargers": True}
    r = await read_once(make_http("grid", flipped, env(None, Chargers(2500.0))))
    assert (r.grid_power_w, r.battery_power_w, r.house_power_w) == (1250.0, -500.0, 1500.0)


async def test_http_battery_state_of_charge_is_a_percentage_and_not_scaled(device: Device) -> None:
    device.serve("/soc", {"grid": -1.5, "battery": {"p": 0.8, "soc": 81.5}})
    options = {
        "url": f"http://127.0.0.1:{device.port}/soc",
        "grid_path": "grid",
        "battery_path": "battery.p",
        "battery_soc_path": "battery.soc",
        "scale": 1000,
    }
    r = await read_once(make_http("grid", options, env()))
    assert (r.grid_power_w, r.battery_power_w, r.battery_soc_pct) == (-1500.0, 800.0, 81.5)


async def test_http_phase_currents_for_a_circuit_meter_are_not_scaled(device: Device) -> None:
    device.serve("/sub", {"p": 2.1, "i": [3.5, 0.25, 7], "bad": "x"})
    options = {"url": f"http://127.0.0.1:{device.port}/sub", "grid_path": "p", "scale": 1000}
    r = await read_once(make_http("gm", {**options, "current_paths": ["i.0", "i.1", "i.2"]}, env()))
    assert (r.grid_power_w, r.phase_currents_a) == (2100.0, (3.5, 0.25, 7.0))
    assert (await read_once(make_http("gm", options, env()))).phase_currents_a is None
    broken = make_http("grid", {**options, "current_paths": ["i.0", "bad", "i.2"]}, env())
    await broken.start()
    try:
        assert "field bad is 'x', not a number" in await fails_with(broken)
    finally:
        await broken.stop()


async def test_http_only_grid_and_a_null_optional(device: Device) -> None:
    device.serve("/api/live", GENERIC)
    options = {"url": f"http://127.0.0.1:{device.port}/api/live", "grid_path": "data.grid.power"}
    r = await read_once(make_http("grid", {**options, "pv_path": "data.night"}, env()))
    assert (r.grid_power_w, r.pv_power_w, r.house_power_w, r.battery_power_w) == (-1.2, None, None, None)


async def test_http_headers_are_sent_and_never_shown(device: Device) -> None:
    device.serve("/api/live", GENERIC, status=403)
    options = {
        "url": f"http://127.0.0.1:{device.port}/api/live",
        "grid_path": "data.grid.power",
        "headers": {"Authorization": "Bearer tok-123456", "X-Site": "home"},
    }
    meter = make_http("grid", options, env())
    message = await fails_with(meter)
    await meter.stop()
    assert message.endswith("/api/live: HTTP 403 Forbidden")
    assert "tok-123456" not in message
    assert device.seen[0][1]["Authorization"] == "Bearer tok-123456"
    assert device.seen[0][1]["X-Site"] == "home"


async def test_http_url_credentials_are_basic_auth_and_hidden(device: Device) -> None:
    device.serve("/api/live", {"data": {}})
    url = f"http://meter:pa55word@127.0.0.1:{device.port}/api/live?token=abc123&site=1"
    meter = make_http("grid", {"url": url, "grid_path": "data.grid.power"}, env())
    message = await fails_with(meter)
    await meter.stop()
    assert message == (
        f"meter grid: http://127.0.0.1:{device.port}/api/live?token=***&site=1: field data.grid.power missing"
    )
    assert device.seen[0][1]["Authorization"] == "Basic bWV0ZXI6cGE1NXdvcmQ="  # meter:pa55word


def test_shown_url() -> None:
    assert shown_url(URL("http://u:p@h:81/x?api_key=1&id=0")) == "http://h:81/x?api_key=***&id=0"
    assert shown_url(URL("http://h/x")) == "http://h/x"


@pytest.mark.parametrize(
    ("path", "doc", "expect"),
    [
        ("a.0.b", {"a": [{"b": 1}]}, None),
        ("a.1.b", {"a": [{"b": 1}]}, "field a.1.b missing"),
        ("a.b", {"a": [{"b": 1}]}, "field a.b missing"),
        ("a.x", {"a": {"x": float("nan")}}, "field a.x is not a finite number"),  # json.dumps writes NaN
        ("a", {"a": [1]}, "field a is [1], not a number"),
        ("a", {"a": "x" * 100}, "not a number"),
    ],
)
async def test_http_path_errors(device: Device, path: str, doc: dict[str, Any], expect: str | None) -> None:
    device.serve("/j", doc)
    meter = make_http("grid", {"url": f"http://127.0.0.1:{device.port}/j", "grid_path": path}, env())
    if expect is None:
        assert (await read_once(meter)).grid_power_w == 1.0
        return
    message = await fails_with(meter)
    await meter.stop()
    assert expect in message
    assert len(message) < 200


# ---------------------------------------------------------------------------- failure modes (all types)

FACTORIES: dict[str, tuple[MeterFactory, dict[str, Any], str, str]] = {
    "fronius": (make_fronius, {}, FRONIUS_PATH, GEN24_BATTERY_CHARGING),
    "shelly2": (make_shelly, {}, "/rpc/EM.GetStatus?id=0", PRO3EM_EXPORTING),
    "shelly1": (make_shelly, {"generation": 1}, "/status", GEN1_3EM_IMPORTING),
    "http": (make_http, {"grid_path": "total_act_power"}, "/rpc/EM.GetStatus?id=0", PRO3EM_EXPORTING),
}


def build(kind: str, port: int, **extra: Any) -> Meter:
    factory, options, path, _ = FACTORIES[kind]
    where: dict[str, Any] = (
        {"url": f"http://127.0.0.1:{port}{path}"} if kind == "http" else {"host": "127.0.0.1", "port": port}
    )
    return factory("grid", {**where, **options, **extra}, env())


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_connection_refused_then_recovery(kind: str) -> None:
    port = free_port()
    meter = build(kind, port)
    await meter.start()
    message = await fails_with(meter)
    assert message.endswith(": cannot connect (connection refused)")
    dev = Device()
    await dev.start(port)  # the device comes back on the same port
    try:
        _, _, path, body = FACTORIES[kind]
        dev.serve(path, body)
        assert (await meter.read()).grid_power_w is not None
        await dev.stop()  # and goes away again
        assert (await fails_with(meter)).endswith(": cannot connect (connection refused)")
    finally:
        await dev.stop()
        await meter.stop()
        await meter.stop()  # twice is fine


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_stalled_device_times_out_within_timeout_s(device: Device, kind: str) -> None:
    device.stall = True
    meter = build(kind, device.port, timeout_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    message = await fails_with(meter)
    elapsed = loop.time() - started
    await meter.stop()
    assert message.endswith(": no answer within 0.3 s")
    assert elapsed < 3.0  # bounded by timeout_s (generous: a loaded CI box), not hanging


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize(
    ("status", "body", "expect"),
    [
        (500, "oops", ": HTTP 500 Internal Server Error"),
        (404, "{}", ": HTTP 404 Not Found"),
        (200, "{not json", ": invalid JSON (Expecting property name enclosed in double quotes)"),
        (200, b"\xff\xfe{}", ": invalid JSON (not UTF-8 text)"),
        (200, "", ": invalid JSON (Expecting value)"),
        (200, "[]", " missing"),
    ],
)
async def test_bad_answers_give_one_line(
    device: Device, kind: str, status: int, body: Any, expect: str
) -> None:
    _, _, path, _ = FACTORIES[kind]
    device.serve(path, body, status=status)
    meter = build(kind, device.port)
    message = await fails_with(meter)
    assert message.endswith(expect)
    device.serve(path, FACTORIES[kind][3])  # the device is well again: the same session recovers
    assert (await meter.read()).grid_power_w is not None
    await meter.stop()


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_a_server_that_hangs_up_gives_one_line(kind: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"garbage, not HTTP\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    meter = build(kind, server.sockets[0].getsockname()[1])
    try:
        message = await fails_with(meter)
    finally:
        await meter.stop()
        server.close()
        await server.wait_closed()
    assert ": HTTP failed: bad answer (Bad status line: " in message


async def test_read_without_start_and_stop_twice(device: Device) -> None:
    device.serve(FRONIUS_PATH, SYMO_NIGHT_NO_BATTERY)
    meter = build("fronius", device.port)
    await meter.stop()  # never started: nothing to close
    assert (await meter.read()).grid_power_w == 412.3  # read() opens the session itself
    await meter.stop()
    await meter.stop()
    await meter.start()  # and it can start again after a stop
    assert (await meter.read()).grid_power_w == 412.3
    await meter.stop()


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("factory", "options", "option"),
    [
        (make_fronius, {}, "host"),
        (make_fronius, {"host": ""}, "host"),
        (make_fronius, {"host": "http://192.168.1.50/"}, "host"),
        (make_fronius, {"host": "a b"}, "host"),
        (make_fronius, {"host": "fronius", "port": 0}, "port"),
        (make_fronius, {"host": "fronius", "port": 70000}, "port"),
        (make_fronius, {"host": "fronius", "port": "80"}, "port"),
        (make_fronius, {"host": "fronius", "timeout_s": 0}, "timeout_s"),
        (make_fronius, {"host": "fronius", "timeout_s": 600}, "timeout_s"),
        (make_fronius, {"host": "fronius", "hots": 1}, "hots"),
        (make_shelly, {"host": "shelly", "generation": 3}, "generation"),
        (make_shelly, {"host": "shelly", "generation": "2"}, "generation"),
        (make_shelly, {"host": "shelly", "generation": 1, "em_id": 1}, "em_id"),
        (make_shelly, {"host": "shelly", "em_id": -1}, "em_id"),
        (make_shelly, {"host": "shelly", "username": "admin"}, "password"),
        (make_shelly, {"host": "shelly", "password": 1234}, "password"),
        (make_shelly, {"host": "shelly", "username": "a:b", "password": "x"}, "username"),
        (make_shelly, {"hst": "shelly"}, "hst"),
        (make_http, {"grid_path": "a"}, "url"),
        (make_http, {"url": "ftp://host/x", "grid_path": "a"}, "url"),
        (make_http, {"url": "192.168.1.5/x", "grid_path": "a"}, "url"),
        (make_http, {"url": "http://h/x"}, "grid_path"),
        (make_http, {"url": "http://h/x", "grid_path": "a..b"}, "grid_path"),
        (make_http, {"url": "http://h/x", "grid_path": 3}, "grid_path"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "pv_path": ""}, "pv_path"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "scale": 0}, "scale"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "scale": "kW"}, "scale"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "invert_grid": "yes"}, "invert_grid"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "headers": ["X: y"]}, "headers"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "headers": {"Bad Name": "y"}}, "headers"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "headers": {"X-Key": 12345}}, "headers"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "header": {}}, "header"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "current_paths": "a.b"}, "current_paths"),
        (make_http, {"url": "http://h/x", "grid_path": "a", "current_paths": ["a", "b"]}, "current_paths"),
        (
            make_http,
            {"url": "http://h/x", "grid_path": "a", "current_paths": ["a", "b..c", "d"]},
            "current_paths",
        ),
    ],
)
def test_bad_options_name_the_option(factory: MeterFactory, options: dict[str, Any], option: str) -> None:
    with pytest.raises(OptionError) as info:
        factory("grid", options, env())
    assert info.value.option == option
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        (make_fronius, {}, "host: required: the device's host name or IP address"),
        (make_shelly, {"port": 80}, "host: required: the device's host name or IP address"),
        (make_fronius, {"host": None}, "host: required: the device's host name or IP address"),
        (make_fronius, {"host": 5}, "host: expected a host name or IP address, got 5"),
        (make_http, {"grid_path": "a"}, "url: required: the http:// or https:// URL to read, like"),
        (make_http, {"url": "http://h/x"}, "grid_path: required: the dotted path to the value in the JSON"),
    ],
)
def test_missing_required_options_say_required(
    factory: MeterFactory, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(OptionError) as info:
        factory("grid", options, env())
    assert str(info.value).startswith(message) and "None" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "secret"),
    [
        ({"url": "http://h/x", "grid_path": "a", "headers": {"X-Key": 98765}}, "98765"),
        ({"url": "ftp://user:hunter2@h/x", "grid_path": "a"}, "hunter2"),
    ],
)
def test_option_errors_do_not_echo_secrets(options: dict[str, Any], secret: str) -> None:
    with pytest.raises(OptionError) as info:
        make_http("grid", options, env())
    assert secret not in str(info.value)


def test_shelly_password_type_error_does_not_echo_it() -> None:
    with pytest.raises(OptionError) as info:
        make_shelly("grid", {"host": "shelly", "password": 424242}, env())
    assert "424242" not in str(info.value)


def test_valid_options_build_without_io() -> None:
    # Hosts that do not exist: construction must not resolve or connect.
    make_fronius("grid", {"host": "fronius.invalid", "port": 8080, "timeout_s": 1.5}, env())
    make_fronius("grid", {"host": "fe80::1"}, env())
    make_shelly("grid", {"host": "shelly.invalid", "generation": 1, "password": "x"}, env())
    make_http("grid", {"url": "https://api.invalid/x", "grid_path": "a.0", "headers": {}}, env())


@pytest.mark.integration
async def test_a_stalled_meter_never_slows_the_charger_control(device: Device) -> None:
    """Issue 10 item 7 on the real stack: a meter that never answers, a 0.5 s tick that stays 0.5 s."""
    from .rpc_support import STACK_CONFIG, full_stack

    device.stall = True
    config = (
        STACK_CONFIG.replace("mode: fixed", "mode: pv")
        .replace("  stale_after_s: 10\n", "  stale_after_s: 10\n  meter_timeout_s: 2\n")
        .replace(
            "meters: []",
            "meters:\n  - id: grid\n    type: http\n"
            f"    options: {{url: 'http://127.0.0.1:{device.port}/grid', grid_path: grid, timeout_s: 30}}",
        )
    )
    async with full_stack(config) as (stack, model, _url):
        ticks, reads = stack.controller.ticks, model.record.reads
        await asyncio.sleep(3.0)  # real time: the tick's own cadence is what is measured
        assert stack.controller.ticks - ticks >= 4  # 6 at 0.5 s; a tick waiting for the meter made 1
        assert model.record.reads - reads >= 4  # the charger is polled every tick
        grid = stack.controller.snapshot().meters["grid"]
        assert grid.error == "no answer within 2 s"
        decision = stack.controller.last_decision("wallbox")
        assert decision is not None and "no fresh grid-meter reading" in decision.decision.reason
