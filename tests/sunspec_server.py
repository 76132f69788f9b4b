"""A small SunSpec device on pymodbus's Modbus TCP server, for the sunspec meter tests.

Each unit id serves one :class:`SunSpecImage`: the "SunS" marker at a base
address, then a chain of models (each ``[ID, L, L data words]``), then the end
marker ``0xFFFF``. The image is plain Python data behind the server's
``action`` hook, so a test changes a value between two reads and the next read
sees it. Reads outside the image get "illegal data address" like a real device;
ids without an image get "gateway target failed to respond" like a data manager
asked for a meter it does not have. The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SUNS = [0x5375, 0x6E53]
END_ID = 0xFFFF
NOT_IMPLEMENTED_INT16 = 0x8000
NOT_IMPLEMENTED_FLOAT32 = [0x7FC0, 0x0000]

# Model lengths (L, without the two header words) and where total W sits, counted from
# the ID word: the same table the plugin uses, written out again so a typo in one
# does not hide in both.
_INT_METER_L, _INT_METER_W, _INT_METER_W_SF = 105, 18, 22
_FLOAT_METER_L, _FLOAT_METER_W = 124, 28
_INT_INVERTER_L, _INT_INVERTER_W, _INT_INVERTER_W_SF = 50, 14, 15
_FLOAT_INVERTER_L, _FLOAT_INVERTER_W = 60, 22


def u16(value: int) -> int:
    """A signed 16-bit value as the register word."""
    return value & 0xFFFF


def f32(value: float) -> list[int]:
    """A float32 as two words, high word first (SunSpec's order)."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def _block(model_id: int, length: int) -> list[int]:
    return [model_id, length] + [0] * length


def _text(text: str, words: int) -> list[int]:
    raw = text.encode("ascii").ljust(2 * words, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * words, 2)]


def common(manufacturer: str = "Surplus", model: str = "Test device") -> list[int]:
    """Common model 1 (L=66): manufacturer and model strings, the rest zero."""
    words = _block(1, 66)
    words[2:18] = _text(manufacturer, 16)
    words[18:34] = _text(model, 16)
    return words


def int_meter(model_id: int = 203, *, w: int = 0, w_sf: int = 0) -> list[int]:
    """Meter model 201..204 (int16 + scale factors) with total W = ``w`` * 10^``w_sf``."""
    words = _block(model_id, _INT_METER_L)
    words[_INT_METER_W] = u16(w)
    words[_INT_METER_W_SF] = u16(w_sf)
    return words


def float_meter(model_id: int = 213, *, w: float = 0.0) -> list[int]:
    """Meter model 211..214 (float32) with total W = ``w``."""
    words = _block(model_id, _FLOAT_METER_L)
    words[_FLOAT_METER_W : _FLOAT_METER_W + 2] = f32(w)
    return words


def int_inverter(model_id: int = 103, *, w: int = 0, w_sf: int = 0) -> list[int]:
    """Inverter model 101..103 (int16 + scale factors) with AC W = ``w`` * 10^``w_sf``."""
    words = _block(model_id, _INT_INVERTER_L)
    words[_INT_INVERTER_W] = u16(w)
    words[_INT_INVERTER_W_SF] = u16(w_sf)
    return words


def float_inverter(model_id: int = 113, *, w: float = 0.0) -> list[int]:
    """Inverter model 111..113 (float32) with AC W = ``w``."""
    words = _block(model_id, _FLOAT_INVERTER_L)
    words[_FLOAT_INVERTER_W : _FLOAT_INVERTER_W + 2] = f32(w)
    return words


class SunSpecImage:
    """The register image of one unit: marker, models, end marker."""

    def __init__(
        self, models: Sequence[Sequence[int]], *, base: int = 40000, end_length: bool = True
    ) -> None:
        self.base = base
        self.words: list[int] = list(SUNS)
        self._starts: list[tuple[int, int]] = []  # (model id, index of its ID word)
        for model in models:
            self._starts.append((model[0], len(self.words)))
            self.words.extend(model)
        # Some devices stop right after the end ID, without its length word.
        self.words.extend([END_ID, 0] if end_length else [END_ID])
        if base + len(self.words) > 0x10000:
            raise ValueError("the image does not fit below address 65536")

    def read(self, address: int, count: int) -> list[int] | None:
        """The words at ``address`` (None when any of them is outside the image)."""
        start = address - self.base
        if start < 0 or start + count > len(self.words):
            return None
        return self.words[start : start + count]

    def put(self, model_id: int, offset: int, values: Sequence[int]) -> None:
        """Overwrite words of the first model ``model_id``, ``offset`` counted from its ID word."""
        for mid, index in self._starts:
            if mid == model_id:
                self.words[index + offset : index + offset + len(values)] = list(values)
                return
        raise KeyError(f"no model {model_id} in this image")

    def set_int_w(self, model_id: int, w: int, w_sf: int) -> None:
        """Set W and W_SF of an int+SF meter (20x) or inverter (10x) model."""
        self.put(model_id, _w_offset(model_id), [u16(w)])
        self.put(model_id, _INT_METER_W_SF if model_id // 100 == 2 else _INT_INVERTER_W_SF, [u16(w_sf)])

    def set_float_w(self, model_id: int, w: float) -> None:
        """Set W of a float32 meter (21x) or inverter (11x) model."""
        self.put(model_id, _w_offset(model_id), f32(w))

    def set_raw_w(self, model_id: int, words: Sequence[int]) -> None:
        """Put raw words at W (e.g. a 'not implemented' marker)."""
        self.put(model_id, _w_offset(model_id), words)


def _w_offset(model_id: int) -> int:
    family, variant = divmod(model_id, 100)
    floating = variant > 10
    if family == 2:
        return _FLOAT_METER_W if floating else _INT_METER_W
    return _FLOAT_INVERTER_W if floating else _INT_INVERTER_W


class SunSpecServer:
    """Modbus TCP on 127.0.0.1 serving one :class:`SunSpecImage` per unit id."""

    def __init__(self, units: Mapping[int, SunSpecImage], *, port: int = 0) -> None:
        self.units = dict(units)
        self.port = port
        #: Every request (read or write) that reached a unit, in order: (unit, address, count).
        self.requests: list[tuple[int, int, int]] = []
        #: When set, every request is answered with this Modbus exception code.
        self.exception_code: int | None = None
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen (on an ephemeral port the first time, on the same port after :meth:`stop`)."""
        server = ModbusTcpServer(self._devices(), address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        self._server = server
        if self.port == 0:
            sockets = getattr(server.transport, "sockets", None)
            if not sockets:
                raise RuntimeError("the server did not bind a socket")
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> SunSpecServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def reads_since(self, index: int) -> list[tuple[int, int, int]]:
        """The requests after the first ``index`` ones."""
        return self.requests[index:]

    def _devices(self) -> list[SimDevice]:
        devices = []
        for unit, image in self.units.items():

            async def action(
                function_code: int,
                start_address: int,
                address: int,
                count: int,
                registers: list[int],
                values: list[int] | list[bool] | None,
                _unit: int = unit,
                _image: SunSpecImage = image,
            ) -> ExcCodes | None:
                self.requests.append((_unit, address, count))
                if self.exception_code is not None:
                    return ExcCodes(self.exception_code)
                if values is not None:
                    return ExcCodes.ILLEGAL_FUNCTION  # read-only, like a meter's SunSpec map
                words = _image.read(address, count)
                if words is None:
                    return ExcCodes.ILLEGAL_ADDRESS
                offset = address - start_address
                registers[offset : offset + count] = words
                return None

            # The whole address space reaches the hook, which decides what exists.
            simdata = [SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)]
            devices.append(SimDevice(id=unit, simdata=simdata, action=action))

        async def absent(*_: object) -> ExcCodes:
            return ExcCodes.GATEWAY_NO_RESPONSE

        # Id 0 answers every id without an image, as a gateway does.
        everything = [SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)]
        devices.append(SimDevice(id=0, simdata=everything, action=absent))
        return devices
