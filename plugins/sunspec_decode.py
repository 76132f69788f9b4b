"""SunSpec decoding, without I/O: model layouts, the chain, read planning, power values.

The I/O is :mod:`surplus_plugins.sunspec_meter` (discover the chain, read) on
:mod:`surplus_plugins.sunspec_link` (connect, read registers);
what is here is table-tested on words alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient

from surplus.modbus.plan import merge_ranges

SUNS_MARKER = (0x5375, 0x6E53)
END_MODEL_ID = 0xFFFF
COMMON_MODEL_ID = 1
DEFAULT_BASES = (40000, 0, 50000)
NOT_IMPLEMENTED_INT16 = 0x8000
MAX_SCALE = 10


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a model keeps its total AC power, counted from the model's ID register."""

    w: int
    #: None for float32 models (no scale factor).
    w_sf: int | None

    @property
    def span(self) -> int:
        """Registers from W to the last one needed."""
        return (self.w_sf - self.w + 1) if self.w_sf is not None else 2


_INT_METER = Layout(w=18, w_sf=22)
_FLOAT_METER = Layout(w=28, w_sf=None)
_INT_INVERTER = Layout(w=14, w_sf=15)
_FLOAT_INVERTER = Layout(w=22, w_sf=None)

METER_MODELS: Mapping[int, Layout] = {
    **dict.fromkeys((201, 202, 203, 204), _INT_METER),
    **dict.fromkeys((211, 212, 213, 214), _FLOAT_METER),
}
INVERTER_MODELS: Mapping[int, Layout] = {
    **dict.fromkeys((101, 102, 103), _INT_INVERTER),
    **dict.fromkeys((111, 112, 113), _FLOAT_INVERTER),
}


class SunSpecError(Exception):
    """A one-line failure: no connection, no SunSpec map, no meter model, a bad value."""


class ExceptionReply(SunSpecError):
    """The device answered a request with a Modbus exception."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def from_gateway(self) -> bool:
        """Codes 10 and 11: a gateway has nobody behind the unit id asked for."""
        return self.code in (10, 11)


@dataclass(frozen=True, slots=True)
class Model:
    """One model of a chain: its ID, the address of its ID register, its length."""

    model_id: int
    address: int
    length: int

    def describe(self) -> str:
        if self.model_id == COMMON_MODEL_ID:
            return "common(1)"
        if self.model_id in METER_MODELS:
            return f"meter({self.model_id})"
        if self.model_id in INVERTER_MODELS:
            return f"inverter({self.model_id})"
        return str(self.model_id)


@dataclass(frozen=True, slots=True)
class Chain:
    """The models one unit publishes."""

    unit: int
    base: int
    models: tuple[Model, ...]

    def first(self, ids: Mapping[int, Layout]) -> Model | None:
        """The first model whose ID is in ``ids``."""
        return next((m for m in self.models if m.model_id in ids), None)

    def describe(self) -> str:
        listed = ", ".join(m.describe() for m in self.models) or "no models"
        return f"unit {self.unit} at {self.base}: {listed}"


@dataclass(frozen=True, slots=True)
class Point:
    """A power value to read: unit, model and where W (and W_SF) sit."""

    what: str
    unit: int
    model: Model
    layout: Layout

    @property
    def start(self) -> int:
        return self.model.address + self.layout.w

    @property
    def end(self) -> int:
        return self.start + self.layout.span


@dataclass(frozen=True, slots=True)
class Span:
    """One read transaction."""

    unit: int
    start: int
    count: int


def plan_reads(points: Sequence[Point]) -> tuple[Span, ...]:
    """As few reads as cover all points: points on one unit share a read within 125 registers."""
    ranges = merge_ranges((p.unit, p.start, p.end) for p in points)
    return tuple(Span(unit, start, count) for unit, start, count in ranges)


def _int16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def decode_power(point: Point, words: Mapping[tuple[int, int], int]) -> float:
    """Total W of ``point`` from the words read, keyed by (unit, address); SunSpecError when not implemented."""
    where = f"{point.what} model {point.model.model_id} on unit {point.unit}"
    w_at = point.start
    if point.layout.w_sf is None:
        regs = [words[(point.unit, w_at)], words[(point.unit, w_at + 1)]]
        value = AsyncModbusTcpClient.convert_from_registers(regs, AsyncModbusTcpClient.DATATYPE.FLOAT32)
        assert isinstance(value, float)
        if not math.isfinite(value):
            raise SunSpecError(f"{where}: W is not implemented (float NaN)")
        return round(value, 2)  # float32 carries ~7 digits: 1500.3 arrives as 1500.300048828125
    raw = words[(point.unit, w_at)]
    raw_sf = words[(point.unit, point.model.address + point.layout.w_sf)]
    if raw == NOT_IMPLEMENTED_INT16:
        raise SunSpecError(f"{where}: W is not implemented (0x8000)")
    if raw_sf == NOT_IMPLEMENTED_INT16:
        raise SunSpecError(f"{where}: W_SF is not implemented (0x8000)")
    sf = _int16(raw_sf)
    if not -MAX_SCALE <= sf <= MAX_SCALE:
        raise SunSpecError(f"{where}: W_SF {sf} is outside -{MAX_SCALE}..{MAX_SCALE}")
    # Dividing by an exact power of ten keeps 12345 * 10^-2 at 123.45.
    return float(_int16(raw) * 10**sf) if sf >= 0 else _int16(raw) / 10 ** (-sf)
