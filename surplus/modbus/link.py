"""The connection to a line: the :class:`Link` the bus owner talks through, and
:class:`PymodbusLink`, the real one over pymodbus (serial or RTU over TCP), with its
timeouts and reconnects left to the owner and pymodbus's own noise kept out of the log."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from .base import EXCEPTION_TEXT, BusError, ModbusExceptionReply, PortUnavailable
from .line import BusConfig

log = logging.getLogger(__name__)


class LinkLost(BusError):
    """The port or connection went away; the owner reconnects."""


class Link(Protocol):
    """One open connection to the line. Only the bus owner task uses it."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the port; raise :class:`BusError` with a one-line reason."""
        ...

    def close(self) -> None: ...

    async def read(self, device_id: int, address: int, count: int) -> list[int]: ...

    async def write_register(self, device_id: int, address: int, value: int) -> None: ...

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None: ...


class _PymodbusNoise(logging.Filter):
    """Drop pymodbus's per-attempt log lines: the bus reports those states once, itself."""

    NOISE = (
        "Failed to connect",
        "No response received after",
        "Not connected, trying to connect",
        "Cancel send, because not connected",
        "received pdu without a corresponding request",
        "Repeating....",
    )
    last_connect_error = ""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to connect"):
            _PymodbusNoise.last_connect_error = message.removeprefix("Failed to connect").strip()
        return not any(n in message for n in self.NOISE)


def _install_noise_filter() -> None:
    target = logging.getLogger("pymodbus.logging")
    if not any(isinstance(f, _PymodbusNoise) for f in target.filters):
        target.addFilter(_PymodbusNoise())


def _exception_reply(pdu: ModbusPDU, what: str) -> ModbusExceptionReply:
    code = int(getattr(pdu, "exception_code", 0))
    text = EXCEPTION_TEXT.get(code, "exception")
    return ModbusExceptionReply(code, f"{what}: {text} (exception {code})")


class PymodbusLink:
    """A :class:`Link` on pymodbus: serial RTU, or RTU framing over TCP."""

    def __init__(self, config: BusConfig) -> None:
        self._config = config
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        _install_noise_filter()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        c = self._config
        # The backstop timeout is longer than ours so the owner's clock decides.
        common = {"timeout": c.timeout_s + 0.5, "retries": 0, "reconnect_delay": 0}
        if c.is_tcp:
            host, port = c.tcp_address
            return AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, **common)  # type: ignore[arg-type]
        return AsyncModbusSerialClient(
            c.port,
            framer=FramerType.RTU,
            baudrate=c.baudrate,
            bytesize=c.bytesize,
            parity=c.parity,
            stopbits=c.stopbits,
            **common,  # type: ignore[arg-type]
        )

    async def connect(self) -> None:
        self.close()
        c = self._config
        # Not reset per attempt: pymodbus logs a repeated message once, so a repeat keeps the old text.
        client = self._make_client()
        if not await client.connect():
            client.close()
            reason = _PymodbusNoise.last_connect_error
            if not reason and not c.port.startswith("tcp://") and not os.path.exists(c.port):  # noqa: ASYNC240 (a stat of a /dev path, instant)
                reason = "no such device; is the adapter plugged in?"
            raise PortUnavailable(f"{c.port}: cannot open ({reason or 'no answer to connect'})")
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _live(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise LinkLost(f"{self._config.port}: connection lost")
        return self._client

    async def read(self, device_id: int, address: int, count: int) -> list[int]:
        what = f"read {count} @0x{address:04X} from device {device_id}"
        try:
            reply = await self._live().read_holding_registers(address, count=count, device_id=device_id)
        except ConnectionException as exc:
            raise LinkLost(f"{self._config.port}: connection lost ({exc})") from None
        except ModbusException as exc:
            raise BusError(f"{what}: {exc}") from None
        if reply.isError():
            raise _exception_reply(reply, what)
        registers = list(getattr(reply, "registers", []))
        # RTU has no transaction id: a late reply to an abandoned request would
        # otherwise be taken for this one.
        if reply.function_code != 0x03 or len(registers) != count:
            raise BusError(f"{what}: unexpected reply (fc {reply.function_code}, {len(registers)} words)")
        return registers

    async def _write(self, what: str, fc: int, call: Callable[[], object]) -> None:
        try:
            reply = await call()  # type: ignore[misc]
        except ConnectionException as exc:
            raise LinkLost(f"{self._config.port}: connection lost ({exc})") from None
        except ModbusException as exc:
            raise BusError(f"{what}: {exc}") from None
        assert isinstance(reply, ModbusPDU)
        if reply.isError():
            raise _exception_reply(reply, what)
        if reply.function_code != fc:
            raise BusError(f"{what}: unexpected reply (fc {reply.function_code})")

    async def write_register(self, device_id: int, address: int, value: int) -> None:
        client = self._live()
        await self._write(
            f"write 0x{address:04X}={value} to device {device_id}",
            0x06,
            lambda: client.write_register(address, value, device_id=device_id),
        )

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None:
        client = self._live()
        await self._write(
            f"write {len(values)} @0x{address:04X} to device {device_id}",
            0x10,
            lambda: client.write_registers(address, values, device_id=device_id),
        )
