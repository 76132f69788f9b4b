"""Meter type "http": numbers out of any JSON endpoint by dotted paths.

Paths look like ``data.grid.power``; a number part indexes a list,
``meters.0.power``. The polling, its one-line errors and the shared option
helpers are in :mod:`.http_poll`.
Options: ``url`` (required), ``grid_path`` (required), ``pv_path``,
``battery_path``, ``house_path``, ``battery_soc_path`` (the home battery's state
of charge in percent; not scaled), ``scale`` (multiplies every power, e.g. 1000
for kW; default 1), ``invert_grid`` (the device says + = export),
``invert_battery`` (the device says + = discharge), ``house_includes_chargers``
(the device's house power includes the wallboxes, which are then subtracted),
``headers`` (a mapping sent with every request; values never appear in
errors), ``timeout_s`` (default 2), ``current_paths`` (three dotted paths: the
current on L1, L2 and L3 in A, not scaled; for a circuit's meter,
``circuits[].meter``). Credentials in the URL
(``http://user:pass@host/``) are sent as HTTP basic auth and never shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from surplus.hookspecs import RegisterMeter, hookimpl
from surplus.meter import Meter, MeterEnv
from surplus.options import OptionError, check_known, flag, number
from surplus.types import MeterReading

from .http_poll import (
    JsonPoller,
    Path,
    headers_option,
    house_without_chargers,
    path_option,
    timeout_option,
    url_option,
)


class HttpJsonMeter:
    """Numbers from any JSON endpoint by dotted paths; see the module docstring."""

    def __init__(
        self,
        meter_id: str,
        env: MeterEnv,
        poller: JsonPoller,
        *,
        grid_path: Path,
        pv_path: Path | None = None,
        battery_path: Path | None = None,
        house_path: Path | None = None,
        battery_soc_path: Path | None = None,
        scale: float = 1.0,
        invert_grid: bool = False,
        invert_battery: bool = False,
        house_includes_chargers: bool = False,
        current_paths: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.meter_id = meter_id
        self._env = env
        self._http = poller
        self.grid_path = grid_path
        self.pv_path = pv_path
        self.battery_path = battery_path
        self.house_path = house_path
        self.battery_soc_path = battery_soc_path
        self.scale = scale
        self.invert_grid = invert_grid
        self.invert_battery = invert_battery
        self.house_includes_chargers = house_includes_chargers
        self.current_paths = current_paths

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    def _scaled(self, doc: Any, path: Path | None, sign: float = 1.0) -> float | None:
        if path is None:
            return None
        value = self._http.number(doc, path, null_ok=True)
        return None if value is None else round(sign * value * self.scale, 1)

    async def read(self) -> MeterReading:
        doc = await self._http.get_json()
        grid = self._http.number(doc, self.grid_path)
        assert grid is not None
        house = self._scaled(doc, self.house_path)
        if self.house_includes_chargers:
            house = house_without_chargers(self._env, house)
        return MeterReading(
            meter_id=self.meter_id,
            read_at_s=self._env.clock.now(),
            grid_power_w=round((-1.0 if self.invert_grid else 1.0) * grid * self.scale, 1),
            pv_power_w=self._scaled(doc, self.pv_path),
            house_power_w=house,
            battery_power_w=self._scaled(doc, self.battery_path, -1.0 if self.invert_battery else 1.0),
            battery_soc_pct=(
                None
                if self.battery_soc_path is None
                else self._http.number(doc, self.battery_soc_path, null_ok=True)
            ),
            phase_currents_a=self._currents(doc),
        )

    def _currents(self, doc: Any) -> tuple[float, float, float] | None:
        if self.current_paths is None:
            return None
        amps = [self._http.number(doc, path) or 0.0 for path in self.current_paths]
        return amps[0], amps[1], amps[2]


HTTP_OPTIONS = (
    "url",
    "grid_path",
    "pv_path",
    "battery_path",
    "battery_soc_path",
    "house_path",
    "scale",
    "invert_grid",
    "invert_battery",
    "house_includes_chargers",
    "headers",
    "timeout_s",
    "current_paths",
)


def current_paths_option(options: Mapping[str, Any]) -> tuple[Path, Path, Path] | None:
    """``current_paths``: three dotted paths, the currents on L1, L2 and L3 (A)."""
    value = options.get("current_paths")
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise OptionError(
            "current_paths", f"expected a list of three dotted paths (L1, L2, L3), got {value!r}"
        )
    paths = [path_option({"current_paths": p}, "current_paths", required=True) for p in value]
    a, b, c = (p for p in paths if p is not None)
    return a, b, c


def make_http(meter_id: str, options: Mapping[str, Any], env: MeterEnv) -> Meter:
    """Build a generic JSON meter (validates options; no I/O)."""
    check_known(options, HTTP_OPTIONS)
    url = url_option(options)
    scale = number(options, "scale", 1.0, lo=-1e6, hi=1e6)
    if scale == 0:
        raise OptionError("scale", "must not be 0")
    grid_path = path_option(options, "grid_path", required=True)
    assert grid_path is not None
    poller = JsonPoller(meter_id, url, timeout_s=timeout_option(options), headers=headers_option(options))
    return HttpJsonMeter(
        meter_id,
        env,
        poller,
        grid_path=grid_path,
        pv_path=path_option(options, "pv_path", required=False),
        battery_path=path_option(options, "battery_path", required=False),
        battery_soc_path=path_option(options, "battery_soc_path", required=False),
        house_path=path_option(options, "house_path", required=False),
        scale=scale,
        invert_grid=flag(options, "invert_grid", False),
        invert_battery=flag(options, "invert_battery", False),
        house_includes_chargers=flag(options, "house_includes_chargers", False),
        current_paths=current_paths_option(options),
    )


@hookimpl
def surplus_register_meters(register: RegisterMeter) -> None:
    register(
        "http",
        make_http,
        summary="any JSON over HTTP, with a path per value",
        options={
            name: {"scale": 1.0, "timeout_s": 2.0, "headers": {}}.get(
                name, False if name.startswith(("invert", "house_includes")) else None
            )
            for name in HTTP_OPTIONS
        },
    )
