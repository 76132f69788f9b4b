"""Meter type "sunspec": grid power from a SunSpec meter over Modbus TCP.

Many inverters, data managers and meters (Fronius, SMA, SolarEdge, Kostal ...)
publish a SunSpec register map. What this plugin relies on, with sources:

- The map starts with the marker "SunS" (registers 0x5375 0x6E53) at a base
  address, usually 40000, on some devices 0 or 50000; pysunspec2, the SunSpec
  Alliance's own client, probes ``[0, 40000, 50000]`` and checks for
  ``b'SunS'`` (sunspec/pysunspec2 ``sunspec2/modbus/client.py``,
  ``SunSpecModbusClientDevice.scan``; ``SUNS_BASE_ADDR_DEFAULT = 40000`` in
  ``sunspec2/mb.py``). We try 40000 first because it is by far the most common.
- After the marker comes a chain of models, each ``ID``, ``L`` (length in
  registers, without those two) and ``L`` data registers; the chain ends with
  ID 0xFFFF (``SUNS_END_MODEL_ID`` in ``sunspec2/mb.py``). Model 1 is the
  common model (manufacturer, model, serial).
- Meter models (sunspec/models ``json/model_201.json`` .. ``model_204.json``):
  201 single phase, 202 split phase, 203 wye three phase, 204 delta; int16
  values with scale factors. Counted from the model's ID register, total real
  power ``W`` is at offset 18 and its scale factor ``W_SF`` at 22 (A, AphA,
  AphB, AphC, A_SF, PhV, 3 phase voltages, PPV, 3 line voltages, V_SF, Hz,
  Hz_SF come first). Models 211..214 (``model_211.json``, ``model_213.json``)
  are the float32 twins: no scale factors, ``W`` at offset 28.
- Inverter models (``model_101.json`` .. ``model_103.json``): AC power ``W``
  (int16) at offset 14, ``W_SF`` at 15; float twins 111..113
  (``model_113.json``): ``W`` (float32) at offset 22. Used for ``pv_power_w``
  when the device is also an inverter.
- "Not implemented" is 0x8000 for int16 and for scale factors (sunssf), NaN
  (0x7FC00000) for float32 (``SUNS_UNIMPL_INT16``, ``SUNS_UNIMPL_SUNSSF``,
  ``SUNS_UNIMPL_FLOAT32`` in ``sunspec2/mb.py``). W is int16 in every model
  read here, so 0xFFFF is -1 (x 10^W_SF), a real value; 0xFFFF means "not
  implemented" only for unsigned fields, which we do not read. Such values
  become an error (meter) or ``pv_power_w=None`` (inverter), never a number.

Sign of the meter's W: the meter models count import and export separately
(TotWhImp, TotWhExp) and a grid meter's W is positive while the site imports,
which is our contract too, so ``invert`` defaults to false. evcc reads W as is
for Fronius (unit 200) and the Kostal Smart Energy Meter, whose sign matches
its "positive = grid consumption" rule (evcc ``templates/definition/meter/
fronius-gen24.yaml``, ``kostal-ksem.yaml``), but negates it for SolarEdge
meters (``solaredge-hybrid.yaml``: ``value: 203:W``, ``scale: -1``); SolarEdge
users of solaredge_modbus report the same. So: SolarEdge needs
``invert: true``; check any device once (the log shows the first reading: a
kettle switched on at night must make grid power go up).

Options: ``host`` (required), ``port`` (502), ``device_id`` (Modbus unit id,
1), ``meter_device_id`` (the meter's unit id when it differs, e.g. 200 on a
Fronius data manager, where the inverter is unit 1), ``base_address`` (null =
try 40000, 0, 50000), ``invert`` (false), ``timeout_s`` (2, for every connect
and request), ``reconnect_s`` (5: after a failed connect or an unanswered
request, reads fail at once with the same message until this much time has
passed, so a device that is down does not stall every tick by ``timeout_s``;
a connection the device closed is reopened on the next read).

The model chain is discovered once (on the first successful connection) and
kept across reconnects; the first meter model of the chain is used. A read is
one Modbus transaction when the meter and the inverter are on the same unit
and within 125 registers of each other, else two. ``pv_power_w`` is the
inverter's AC output as published (it may dip below zero at night: standby
draw); when the inverter's value is not implemented or its unit does not
answer, ``pv_power_w`` is None and the grid reading stands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from surplus.hookspecs import RegisterMeter, hookimpl
from surplus.meter import Meter, MeterEnv
from surplus.options import OptionError, check_known, flag, integer, number
from surplus.types import MeterReading

from .sunspec_decode import (
    DEFAULT_BASES,
    END_MODEL_ID,
    INVERTER_MODELS,
    METER_MODELS,
    SUNS_MARKER,
    Chain,
    ExceptionReply,
    Model,
    Point,
    Span,
    SunSpecError,
    decode_power,
    plan_reads,
)
from .sunspec_link import ModbusTcpLink

log = logging.getLogger(__name__)

#: A chain longer than this is a misread, not a device.
MAX_MODELS = 100


class SunSpecMeter:
    """Grid power (and PV power, when the device is an inverter too) from a SunSpec device."""

    def __init__(
        self,
        meter_id: str,
        env: MeterEnv,
        *,
        host: str,
        port: int = 502,
        device_id: int = 1,
        meter_device_id: int | None = None,
        base_address: int | None = None,
        invert: bool = False,
        timeout_s: float = 2.0,
        reconnect_s: float = 5.0,
    ) -> None:
        self.meter_id = meter_id
        self._env = env
        self.device_id = device_id
        self.meter_device_id = meter_device_id if meter_device_id is not None else device_id
        self.base_address = base_address
        self.invert = invert
        self._link = ModbusTcpLink(
            f"sunspec {meter_id}", host, port, clock=env.clock, timeout_s=timeout_s, reconnect_s=reconnect_s
        )
        self.meter_point: Point | None = None
        self.inverter_point: Point | None = None
        self.spans: tuple[Span, ...] = ()
        self._pv_problem: str | None = None

    @property
    def address(self) -> str:
        """``host:port``, as every message names the device."""
        return self._link.address

    @property
    def host(self) -> str:
        return self._link.host

    @property
    def port(self) -> int:
        return self._link.port

    @property
    def timeout_s(self) -> float:
        """The bound on every connect and request."""
        return self._link.timeout_s

    @property
    def reconnect_s(self) -> float:
        """How long reads fail at once after a failed connect or an unanswered request."""
        return self._link.reconnect_s

    @property
    def connected(self) -> bool:
        """True while the TCP connection is up."""
        return self._link.connected

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect and discover the models; raises SunSpecError (read() retries later anyway)."""
        await self._ready()

    async def stop(self) -> None:
        self._link.close()

    # --- reading ------------------------------------------------------------

    async def read(self) -> MeterReading:
        await self._ready()
        assert self.meter_point is not None
        words: dict[tuple[int, int], int] = {}
        pv_failure: str | None = None
        for span in self.spans:
            try:
                regs = await self._link.read(span.unit, span.start, span.count)
            except ExceptionReply as exc:
                # An inverter on its own unit may be asleep while the meter answers.
                if self.inverter_point is None or span.unit == self.meter_point.unit:
                    raise
                pv_failure = str(exc)
                continue
            words.update(((span.unit, span.start + i), w) for i, w in enumerate(regs))
        grid = decode_power(self.meter_point, words)
        pv: float | None = None
        if self.inverter_point is not None and pv_failure is None:
            try:
                pv = decode_power(self.inverter_point, words)
            except SunSpecError as exc:
                pv_failure = str(exc)
        self._note_pv(pv_failure)
        return MeterReading(
            meter_id=self.meter_id,
            read_at_s=self._env.clock.now(),
            grid_power_w=-grid if self.invert else grid,
            pv_power_w=pv,
        )

    def _note_pv(self, problem: str | None) -> None:
        if problem == self._pv_problem:
            return
        if problem is not None:
            log.warning("meter %s: no PV power: %s", self.meter_id, problem)
        else:
            log.info("meter %s: PV power readable again", self.meter_id)
        self._pv_problem = problem

    # --- connection and discovery --------------------------------------------

    async def _ready(self) -> None:
        """Connected and discovered, or a SunSpecError."""
        await self._link.open()
        if self.meter_point is None:
            await self._discover()

    async def _discover(self) -> None:
        meter_chain = await self._scan(self.meter_device_id)
        meter_model = meter_chain.first(METER_MODELS)
        if meter_model is None:
            raise SunSpecError(
                f"{self.address}: no SunSpec meter model (201-204, 211-214) on {meter_chain.describe()}"
            )
        chains = [meter_chain]
        inverter_chain: Chain | None = meter_chain
        if self.device_id != self.meter_device_id:
            try:
                inverter_chain = await self._scan(self.device_id)
                chains.insert(0, inverter_chain)
            except SunSpecError as exc:
                if self._link.closed:  # the connection went: that is not about the inverter
                    raise
                # The meter works without it; PV power stays unknown.
                log.warning("meter %s: no inverter data on unit %d: %s", self.meter_id, self.device_id, exc)
                inverter_chain = None
        meter = Point("meter", meter_chain.unit, meter_model, METER_MODELS[meter_model.model_id])
        inverter: Point | None = None
        inverter_model = inverter_chain.first(INVERTER_MODELS) if inverter_chain is not None else None
        if inverter_chain is not None and inverter_model is not None:
            inverter = Point(
                "inverter", inverter_chain.unit, inverter_model, INVERTER_MODELS[inverter_model.model_id]
            )
        self.spans = plan_reads([p for p in (meter, inverter) if p is not None])
        self.meter_point, self.inverter_point = meter, inverter
        using = f"meter({meter_model.model_id}) on unit {meter.unit}"
        if inverter is not None:
            using += f", PV from inverter({inverter.model.model_id}) on unit {inverter.unit}"
        log.info(
            "meter %s: SunSpec on %s: %s; reading %s%s",
            self.meter_id,
            self.address,
            "; ".join(c.describe() for c in chains),
            using,
            " (inverted)" if self.invert else "",
        )

    async def _scan(self, unit: int) -> Chain:
        """Find the marker on ``unit`` and walk its model chain."""
        base, first_id, first_len = await self._find_marker(unit)
        models: list[Model] = []
        address, model_id, length = base + 2, first_id, first_len
        while model_id != END_MODEL_ID:
            if len(models) >= MAX_MODELS:
                raise SunSpecError(
                    f"{self.address} unit {unit}: more than {MAX_MODELS} models; not a SunSpec map"
                )
            models.append(Model(model_id, address, length))
            address += 2 + length
            if address >= 0x10000:
                raise SunSpecError(f"{self.address} unit {unit}: model chain runs past register 65535")
            try:
                model_id, length = await self._link.read(unit, address, 2)
            except ExceptionReply:
                # Some devices end the map right after the end ID, without its length word.
                (model_id,) = await self._link.read(unit, address, 1)
                length = 0
        return Chain(unit, base, tuple(models))

    async def _find_marker(self, unit: int) -> tuple[int, int, int]:
        bases = (self.base_address,) if self.base_address is not None else DEFAULT_BASES
        tried: list[str] = []
        for base in bases:
            try:
                words = await self._link.read(unit, base, 4)
            except ExceptionReply as exc:
                if exc.from_gateway:  # nobody behind this unit id at all
                    raise
                tried.append(f"{base} ({str(exc).rsplit(': ', 1)[-1]})")
                continue
            if tuple(words[:2]) == SUNS_MARKER:
                return base, words[2], words[3]
            tried.append(f"{base} (found 0x{words[0]:04X} 0x{words[1]:04X})")
        raise SunSpecError(f"{self.address} unit {unit}: no SunSpec marker 'SunS' at {', '.join(tried)}")


def _host(options: Mapping[str, Any]) -> str:
    value = options.get("host")
    if value is None:
        raise OptionError("host", "required: the device's IP address or host name")
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise OptionError("host", f"expected a host name or IP address, got {value!r}")
    return value.strip()


def _optional_unit(options: Mapping[str, Any], name: str) -> int | None:
    if options.get(name) is None:
        return None
    return integer(options, name, 0, lo=0, hi=255)


OPTIONS = (
    "host",
    "port",
    "device_id",
    "meter_device_id",
    "base_address",
    "invert",
    "timeout_s",
    "reconnect_s",
)


def make_sunspec(meter_id: str, options: Mapping[str, Any], env: MeterEnv) -> Meter:
    """Build a SunSpec meter (validates options; no I/O)."""
    check_known(options, OPTIONS)
    base = options.get("base_address")
    return SunSpecMeter(
        meter_id,
        env,
        host=_host(options),
        port=integer(options, "port", 502, lo=1, hi=65535),
        device_id=integer(options, "device_id", 1, lo=0, hi=255),
        meter_device_id=_optional_unit(options, "meter_device_id"),
        base_address=None if base is None else integer(options, "base_address", 0, lo=0, hi=0xFFFF - 4),
        invert=flag(options, "invert", False),
        timeout_s=number(options, "timeout_s", 2.0, lo=0.1, hi=60, unit="s"),
        reconnect_s=number(options, "reconnect_s", 5.0, lo=0, hi=3600, unit="s"),
    )


@hookimpl
def surplus_register_meters(register: RegisterMeter) -> None:
    register(
        "sunspec",
        make_sunspec,
        summary="SunSpec inverter or meter over Modbus TCP",
        options={
            "host": None,
            "port": 502,
            "device_id": 1,
            "meter_device_id": None,
            "base_address": None,
            "invert": False,
            "timeout_s": 2.0,
            "reconnect_s": 5.0,
        },
    )
