"""Meter type "shelly": a Shelly three-phase energy meter at the grid connection.

- ``generation: 2`` (default; Pro 3EM, 3EM Gen3 and other devices with the EM
  component): ``GET /rpc/EM.GetStatus?id={em_id}`` answers the EM status object
  directly; ``total_act_power`` (W) is the active power summed over the phases,
  signed: + import, - export.
- ``generation: 1`` (the original Shelly 3EM): ``GET /status`` has an
  ``emeters`` list, one entry per phase with ``power`` (W, negative while
  returning to the grid) and ``is_valid``; the grid power is their sum. A phase
  with ``is_valid: false`` fails the reading.

A Shelly measures only the grid, so ``pv_power_w``, ``house_power_w`` and
``battery_power_w`` stay unknown (``None``). The phase currents (``a_current``,
``b_current``, ``c_current``; Gen1 ``emeters[i].current``) are passed on where all
three are numbers, so a Shelly can be a circuit's meter (``circuits[].meter``).

Authentication: ``password`` (and ``username``, default ``admin``) for devices
with access protection: HTTP basic auth on Gen1, HTTP digest auth (SHA-256) on
Gen2+ (needs aiohttp >= 3.12). The password never appears in messages.

Sources relied on (facts only): Shelly's Gen2 API docs, component "EM"
(``EM.GetStatus``; "handles the data collection and processing from energy
meter devices like the ShellyPro3EM") and the Pro 3EM device page; evcc's
shelly-pro-3em / shelly-3em (Gen.1) meter docs; captured ``EM.GetStatus``
answers and Gen1 ``/status`` answers in public projects (``total_act_power``,
``a_act_power`` ...; ``emeters[i].power``, ``is_valid``, ``total_returned``).

Options: ``host`` (required), ``port`` (80), ``generation`` (1 or 2, default 2),
``em_id`` (0, Gen2 only), ``username``, ``password``, ``timeout_s`` (2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from surplus.hookspecs import RegisterMeter, hookimpl
from surplus.meter import Meter, MeterEnv
from surplus.options import OptionError, check_known, choice, integer
from surplus.types import MeterReading

from .http_poll import JsonPoller, basic_auth, device_url, timeout_option

GEN2_PATH = "/rpc/EM.GetStatus"
GEN1_PATH = "/status"
TOTAL_ACT_POWER = ("total_act_power",)
EMETERS = ("emeters",)


class ShellyMeter:
    """Grid power from a Shelly 3EM (Gen1) or Pro 3EM (Gen2+); see the module docstring."""

    def __init__(self, meter_id: str, env: MeterEnv, poller: JsonPoller, *, generation: int) -> None:
        self.meter_id = meter_id
        self.generation = generation
        self._env = env
        self._http = poller

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    def _gen1_grid_w(self, doc: Any) -> float:
        emeters = self._http.field(doc, EMETERS)
        if not isinstance(emeters, list) or not emeters:
            raise self._http.error("field emeters is not a list of phases")
        total = 0.0
        for i in range(len(emeters)):
            if isinstance(emeters[i], Mapping) and emeters[i].get("is_valid") is False:
                raise self._http.error(f"field emeters.{i}.is_valid is false (phase {i + 1} not measured)")
            value = self._http.number(doc, ("emeters", str(i), "power"))
            assert value is not None
            total += value
        return total

    async def read(self) -> MeterReading:
        doc = await self._http.get_json()
        if self.generation == 1:
            grid = self._gen1_grid_w(doc)
        else:
            value = self._http.number(doc, TOTAL_ACT_POWER)
            assert value is not None
            grid = value
        return MeterReading(
            meter_id=self.meter_id,
            read_at_s=self._env.clock.now(),
            grid_power_w=round(grid, 1),
            phase_currents_a=self._currents(doc),
        )

    def _currents(self, doc: Any) -> tuple[float, float, float] | None:
        """The three phase currents where the answer has them all as numbers, else None."""
        if self.generation == 1:
            emeters = doc.get("emeters") if isinstance(doc, Mapping) else None
            values = [e.get("current") if isinstance(e, Mapping) else None for e in (emeters or [])]
        else:
            values = [doc.get(f"{p}_current") for p in "abc"] if isinstance(doc, Mapping) else []
        amps = [
            v for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if len(values) != 3 or len(amps) != 3:
            return None
        return float(amps[0]), float(amps[1]), float(amps[2])


def _auth(options: Mapping[str, Any], generation: int) -> tuple[dict[str, str], tuple[Any, ...]]:
    """(headers, client middlewares) for the ``username``/``password`` options."""
    password = options.get("password")
    username = options.get("username", "admin")
    if not isinstance(username, str) or not username or ":" in username:
        raise OptionError("username", "expected a user name without ':'")
    if password is None:
        if "username" in options:
            raise OptionError("password", "a username needs a password")
        return {}, ()
    if not isinstance(password, str) or not password:
        raise OptionError("password", "expected a non-empty string")  # never echo it
    if generation == 1:
        return {"Authorization": basic_auth(username, password)}, ()
    digest = getattr(aiohttp, "DigestAuthMiddleware", None)
    if digest is None:
        raise OptionError("password", "Gen2 digest auth needs aiohttp >= 3.12")
    return {}, (digest(username, password),)


def make_shelly(meter_id: str, options: Mapping[str, Any], env: MeterEnv) -> Meter:
    """Build a Shelly 3EM / Pro 3EM meter (validates options; no I/O)."""
    check_known(options, ("host", "port", "generation", "em_id", "username", "password", "timeout_s"))
    generation = int(choice(options, "generation", 2, (1, 2)))
    em_id = integer(options, "em_id", 0, lo=0, hi=9)
    if generation == 1 and "em_id" in options:
        raise OptionError("em_id", "only Gen2+ devices have EM component ids")
    if generation == 1:
        url = device_url(options, GEN1_PATH)
    else:
        url = device_url(options, GEN2_PATH, {"id": str(em_id)})
    headers, middlewares = _auth(options, generation)
    poller = JsonPoller(
        meter_id, url, timeout_s=timeout_option(options), headers=headers, middlewares=middlewares
    )
    return ShellyMeter(meter_id, env, poller, generation=generation)


@hookimpl
def surplus_register_meters(register: RegisterMeter) -> None:
    register(
        "shelly",
        make_shelly,
        summary="Shelly 3EM / Pro 3EM at the grid connection",
        options={
            "host": None,
            "port": 80,
            "generation": 2,
            "em_id": 0,
            "username": None,
            "password": None,
            "timeout_s": 2.0,
        },
    )
