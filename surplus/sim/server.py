"""The simulator on a real wire: pymodbus's RTU server over TCP or a pty, with faults.

Each device id gets a :class:`pymodbus.simulator.SimDevice` whose ``action``
hook forwards the request to its :class:`~surplus.sim.model.AmtronModel`
(reads refresh the served words, writes go to the model, refusals become
Modbus exception replies). Unknown ids get no answer, as on a real RS485 line.
Faults for tests live in :class:`Faults` and apply to the next requests.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from surplus.clock import SystemClock
from surplus.modbus.base import ModbusExceptionReply

from .model import AmtronModel
from .pty import PtyLink

log = logging.getLogger(__name__)

Transport = Literal["tcp", "pty"]

_FC_READS = (0x03, 0x04)
_FC_WRITE_SINGLE = 0x06
_FC_WRITE_MULTIPLE = 0x10
#: RTU frame sizes: address + function + CRC, plus the payload.
_EXCEPTION_REPLY_BYTES = 5


@dataclass
class Faults:
    """Misbehaviour of the line or the device, for tests. Counters count down per reply."""

    #: Extra time before each reply.
    reply_delay_s: float = 0.0
    #: The next N replies get a corrupted byte (the CRC no longer matches).
    garble_replies: int = 0
    #: The next N requests are answered with Modbus exception ``exception_code`` (the model sees nothing).
    exception_replies: int = 0
    exception_code: int = 4
    #: No replies at all, and the devices do not hear requests.
    silent: bool = False


def char_time_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 2) -> float:
    """Seconds one character takes on the wire (start bit, data, parity, stop bits)."""
    bits = 1 + bytesize + (0 if parity.upper() == "N" else 1) + stopbits
    return bits / baudrate


def frame_time_s(
    nbytes: int, baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 2
) -> float:
    """Wire time of an RTU frame of ``nbytes`` plus the 3.5-character silent interval."""
    return (nbytes + 3.5) * char_time_s(baudrate, bytesize, parity, stopbits)


def frame_sizes(function_code: int, count: int, *, exception: bool = False) -> tuple[int, int]:
    """(request bytes, reply bytes) of one RTU transaction."""
    if function_code == _FC_WRITE_MULTIPLE:
        request, reply = 9 + 2 * count, 8
    elif function_code in _FC_READS:
        request, reply = 8, 5 + 2 * count
    else:
        request, reply = 8, 8
    return request, (_EXCEPTION_REPLY_BYTES if exception else reply)


def transaction_wire_time_s(
    function_code: int,
    count: int,
    *,
    baudrate: int,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: int = 2,
    exception: bool = False,
) -> float:
    """Time a request and its reply occupy a real RS485 line (what ``wire_time=True`` adds)."""
    request, reply = frame_sizes(function_code, count, exception=exception)
    return frame_time_s(request, baudrate, bytesize, parity, stopbits) + frame_time_s(
        reply, baudrate, bytesize, parity, stopbits
    )


class SimulatorServer:
    """One simulated RS485 line with one or more AMTRONs on it."""

    def __init__(
        self,
        models: Mapping[int, AmtronModel],
        *,
        transport: Transport = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        link_path: str | None = None,
        wire_time: bool = False,
        baudrate: int = 57600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 2,
    ) -> None:
        if transport not in ("tcp", "pty"):
            raise ValueError(f"transport must be 'tcp' or 'pty', not {transport!r}")
        if not models:
            raise ValueError("a simulator needs at least one device")
        for device_id in models:
            if not 1 <= device_id <= 247:
                raise ValueError(f"device id {device_id} out of 1..247")
        self.models = models
        self.faults = Faults()
        self.transport: Transport = transport
        self.wire_time = wire_time
        self.baudrate, self.bytesize, self.parity, self.stopbits = baudrate, bytesize, parity, stopbits
        self._host = host
        self._port = port
        self._link: PtyLink | None = (
            PtyLink(link_path, baudrate=baudrate, parity=parity) if transport == "pty" else None
        )
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._vanished = False
        self._sleep = SystemClock().sleep  # wire time is real I/O time, whatever the model's clock

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start serving (TCP: bind; pty: create the link and open its server end)."""
        if self._link is not None:
            self._link.open()
        await self._serve()

    async def stop(self) -> None:
        """Stop serving and remove the pty link."""
        await self._shutdown()
        if self._link is not None:
            self._link.close()

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:PORT`` (RTU framing over TCP) or the pty symlink path."""
        if self._link is not None:
            return self._link.path
        return f"tcp://{self._host}:{self._port}"

    async def vanish(self) -> None:
        """The port disappears: the pty link is unplugged, or the TCP server stops listening."""
        self._vanished = True
        if self._link is not None:
            self._link.vanish()
        else:
            await self._shutdown()

    async def restore(self) -> None:
        """Bring the port back at the same url."""
        if not self._vanished:
            return
        self._vanished = False
        if self._link is not None:
            self._link.restore()
        else:
            await self._serve()

    # --- internals ----------------------------------------------------------

    def _devices(self) -> list[SimDevice]:
        devices = []
        for device_id in self.models:

            async def action(
                function_code: int,
                start_address: int,
                address: int,
                count: int,
                registers: list[int],
                values: list[int] | list[bool] | None,
                _device_id: int = device_id,
            ) -> ExcCodes | None:
                return await self._handle(
                    _device_id, function_code, start_address, address, count, registers, values
                )

            # The whole address space is "valid" to pymodbus so every request reaches the
            # model, which decides like the firmware what exists.
            simdata = [SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)]
            devices.append(SimDevice(id=device_id, simdata=simdata, action=action))

        async def nobody(*_: object) -> ExcCodes:
            return ExcCodes.GATEWAY_NO_RESPONSE  # never sent: _trace_packet drops replies for unknown ids

        # Id 0 catches every other id, so pymodbus does not log a traceback for them.
        devices.append(
            SimDevice(
                id=0, simdata=[SimData(0, count=1, values=0, datatype=DataType.REGISTERS)], action=nobody
            )
        )
        return devices

    async def _serve(self) -> None:
        devices = self._devices()
        server: ModbusTcpServer | ModbusSerialServer
        if self._link is not None:
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self._link.server_path,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                ignore_missing_devices=True,
                trace_packet=self._trace_packet,
            )
        else:
            self._check_port_free()
            server = ModbusTcpServer(
                devices,
                framer=FramerType.RTU,
                address=(self._host, self._port),
                ignore_missing_devices=True,
                trace_packet=self._trace_packet,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self._link is None and self._port == 0:
            sockets = getattr(server.transport, "sockets", None)
            if sockets:
                self._port = int(sockets[0].getsockname()[1])
        log.info("AMTRON simulator serving %s (device ids %s)", self.url, ", ".join(map(str, self.models)))

    def _check_port_free(self) -> None:
        """Fail with one clear line before pymodbus logs its own bind error."""
        if self._port == 0:
            return
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                probe.bind((self._host, self._port))
            except OSError as exc:
                raise OSError(f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}") from None

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            # Give closed connections a turn of the loop to finish.
            with contextlib.suppress(Exception):
                await self._sleep(0)

    async def _handle(
        self,
        device_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        faults = self.faults
        if faults.silent:
            return ExcCodes.DEVICE_FAILURE  # dropped on the way out; the model hears nothing
        result: ExcCodes | None = None
        if values is None and function_code == _FC_WRITE_SINGLE:
            return None  # pymodbus reads the register back to echo an FC 6 write
        if faults.exception_replies > 0:
            faults.exception_replies -= 1
            result = ExcCodes(faults.exception_code)
        else:
            model = self.models[device_id]
            try:
                if values is None:
                    words = model.read(address, count)
                    offset = address - start_address
                    registers[offset : offset + count] = words
                else:
                    model.write(address, [int(v) for v in values], function_code)
            except ModbusExceptionReply as exc:
                result = ExcCodes(exc.code)
        hold = faults.reply_delay_s
        if self.wire_time:
            hold += transaction_wire_time_s(
                function_code,
                count,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                exception=result is not None,
            )
        if hold > 0:
            await self._sleep(hold)
        return result

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending:
            return packet
        if self.faults.silent or not packet or packet[0] not in self.models:
            return b""
        if self.faults.garble_replies > 0:
            self.faults.garble_replies -= 1
            return packet[:-1] + bytes([packet[-1] ^ 0x5A])  # the CRC no longer matches
        return packet
