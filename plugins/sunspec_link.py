"""The SunSpec meter's Modbus TCP link: connect, read holding registers, one-line errors.

One :class:`ModbusTcpLink` per meter wraps a pymodbus TCP client. Every failure
is a :class:`SunSpecError` naming ``host:port`` (and the unit and registers of a
read); a Modbus exception reply is an :class:`ExceptionReply` with its code.
After a failed connect or an unanswered request, :meth:`ModbusTcpLink.open`
fails at once with the same message until ``reconnect_s`` has passed, so a
device that is down does not stall every tick by ``timeout_s``. What the
registers mean is :mod:`.sunspec_meter` (discovery) and :mod:`.sunspec_decode`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from surplus.clock import Clock
from surplus.modbus.base import EXCEPTION_TEXT

from .sunspec_decode import ExceptionReply, SunSpecError

# pymodbus logs each failed connect and each unanswered request itself (a line per
# tick while a device is down). During our own calls those lines are collected here
# instead, so the reason ends up in our one-line error and the log stays quiet.
_pymodbus_lines: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "sunspec_pymodbus_lines", default=None
)


class _Collect(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        sink = _pymodbus_lines.get()
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


def _install_collector() -> None:
    target = logging.getLogger("pymodbus.logging")
    if not any(isinstance(f, _Collect) for f in target.filters):
        target.addFilter(_Collect())


class ModbusTcpLink:
    """One meter's connection to a Modbus TCP device, paced after failures."""

    def __init__(
        self, name: str, host: str, port: int, *, clock: Clock, timeout_s: float, reconnect_s: float
    ) -> None:
        self.name = name
        self.host, self.port = host, port
        self._clock = clock
        self.timeout_s = timeout_s
        self.reconnect_s = reconnect_s
        self._client: AsyncModbusTcpClient | None = None
        self._failed_at: float | None = None
        self._failure = ""
        _install_collector()

    @property
    def address(self) -> str:
        """``host:port``, as every message names the device."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while the TCP connection is up."""
        return self._client is not None and self._client.connected

    @property
    def closed(self) -> bool:
        """True before the first connect, after :meth:`close` and after a failure that dropped the link."""
        return self._client is None

    async def open(self) -> None:
        """Connected, or a SunSpecError (the last one again while ``reconnect_s`` has not passed)."""
        if self.connected:
            return
        self.close()
        now = self._clock.now()
        if self._failed_at is not None and now - self._failed_at < self.reconnect_s:
            raise SunSpecError(self._failure)
        try:
            await self._connect()
        except SunSpecError as exc:
            self._failed_at, self._failure = now, str(exc)
            raise
        self._failed_at = None

    async def _connect(self) -> None:
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.name,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,  # our own reconnect, paced by reconnect_s
        )
        lines: list[str] = []
        token = _pymodbus_lines.set(lines)
        try:
            ok = await client.connect()
        except BaseException:  # cancelled by the caller's deadline
            client.close()
            raise
        finally:
            _pymodbus_lines.reset(token)
        if not ok:
            client.close()
            raise SunSpecError(f"{self.address}: cannot connect ({await self._why_no_connection()})")
        self._client = client

    async def _why_no_connection(self) -> str:
        """Why pymodbus could not connect, from one plain connection attempt.

        pymodbus only reports it in log lines, which other log filters (the
        bus owner's) may already have dropped, so ask the network directly.
        """
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout_s)
        except ConnectionRefusedError:
            return "connection refused"
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        writer.close()
        return "the device accepted a second attempt only"

    def close(self) -> None:
        """Drop the connection (the next :meth:`open` connects anew); safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read(self, unit: int, address: int, count: int) -> list[int]:
        """``count`` holding registers from ``address`` on ``unit``; a SunSpecError or an ExceptionReply."""
        what = f"{self.address} unit {unit}: read {count} @{address}"
        client = self._client
        if client is None or not client.connected:
            self.close()
            raise SunSpecError(f"{self.address}: connection lost")
        lines: list[str] = []
        token = _pymodbus_lines.set(lines)
        try:
            reply = await client.read_holding_registers(address, count=count, device_id=unit)
        except ConnectionException:
            self.close()
            raise SunSpecError(f"{self.address}: connection lost") from None
        except ModbusIOException:
            self.close()  # a late answer must not be taken for the next request's
            message = f"{what}: no answer within {self.timeout_s:g} s"
            # A device that does not answer would cost every read timeout_s: pace the retries.
            self._failed_at, self._failure = self._clock.now(), message
            raise SunSpecError(message) from None
        except ModbusException as exc:
            self.close()
            raise SunSpecError(f"{what}: {exc}") from None
        except BaseException:  # cancelled by the caller's deadline: start clean next time
            self.close()
            raise
        finally:
            _pymodbus_lines.reset(token)
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            text = EXCEPTION_TEXT.get(code, "exception")
            raise ExceptionReply(f"{what}: {text} (Modbus exception {code})", code)
        registers = list(reply.registers)
        if len(registers) != count:
            raise SunSpecError(f"{what}: got {len(registers)} registers")
        return registers
