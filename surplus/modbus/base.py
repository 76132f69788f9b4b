"""The bus contract the charger drivers use.

:class:`surplus.modbus.bus.ModbusBus` implements it over real pymodbus (serial
RTU, or RTU framing over TCP); :class:`surplus.sim.membus.ModelBus` implements
it in memory on top of the simulator model, for fake-clock tests of the loop.
Addresses are protocol addresses (0x0302 is 0x0302).
"""

from __future__ import annotations

from typing import Protocol


class BusError(Exception):
    """A transaction failed: timeout, no connection, or a garbled reply."""


class PortUnavailable(BusError):
    """The port itself is missing or closed (as opposed to a device that does not answer)."""


#: Modbus exception codes in words (the spec's names), for one-line errors.
EXCEPTION_TEXT = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusExceptionReply(BusError):
    """The device answered with a Modbus exception (e.g. 2 illegal address, 3 illegal value)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Bus(Protocol):
    """One RS485 line (or gateway) shared by one or more devices."""

    @property
    def connected(self) -> bool:
        """True while the port is open and the last transaction got an answer."""
        ...

    async def read(self, device_id: int, address: int, count: int) -> list[int]:
        """Read ``count`` holding registers (FC 0x03). Raises :class:`BusError`."""
        ...

    async def write_register(self, device_id: int, address: int, value: int) -> None:
        """Write one register (FC 0x06). Raises :class:`BusError`."""
        ...

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None:
        """Write several registers (FC 0x10). Raises :class:`BusError`."""
        ...

    def start_heartbeat(self, device_id: int, address: int, value: int, interval_s: float) -> None:
        """Write ``value`` to ``address`` now and then every ``interval_s``, ahead of all other traffic."""
        ...

    def stop_heartbeat(self, device_id: int) -> None:
        """Stop that device's heartbeat (the last thing done on shutdown)."""
        ...

    def poll_turn(self, device_id: int, *, urgent: bool = False, reads: tuple[int, ...] = ()) -> bool:
        """True when the device should read its measurements now (False: the line's budget
        is short and it is another box's turn; see :mod:`surplus.modbus.polls`). ``reads``: the
        word counts of its measurement read; ``urgent``: its data matters now."""
        ...
