"""One RS485 line's settings (:class:`BusConfig`) and what its owner counts (:class:`BusStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from . import plan


@dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """Settings of one line. ``port`` is a serial device or ``tcp://HOST:PORT`` (RTU over TCP)."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = 57600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 2
    timeout_s: float = 1.0
    retries: int = 3
    reconnect_interval_s: float = 5.0
    heartbeat_enabled: bool = True
    #: Default interval for drivers that start a heartbeat on this bus.
    heartbeat_interval_s: float = 3.0
    #: A heartbeat is never later than this after the previous one (the box allows 10 s).
    heartbeat_deadline_s: float = 5.0
    #: The control loop's tick: drivers ask for their measurements once per tick.
    poll_tick_s: float = 1.0
    #: The oldest a box's measurements may get (the loop's ``control.stale_after_s``).
    poll_max_age_s: float = 10.0
    #: The share of the line's time the polls and heartbeats may fill (see :mod:`.polls`).
    poll_target_load: float = 0.8

    def __post_init__(self) -> None:
        if not self.port.strip():
            raise ValueError("port must not be empty")
        if self.is_tcp:
            self.tcp_address  # noqa: B018 - validates the URL
        checks = [
            (self.baudrate > 0, "baudrate", "a positive integer"),
            (self.bytesize in (7, 8), "bytesize", "7 or 8"),
            (self.parity in ("N", "E", "O"), "parity", "N, E or O"),
            (self.stopbits in (1, 2), "stopbits", "1 or 2"),
            (self.timeout_s > 0, "timeout_s", "positive"),
            (self.retries >= 0, "retries", ">= 0"),
            (self.reconnect_interval_s > 0, "reconnect_interval_s", "positive"),
            (self.heartbeat_interval_s > 0, "heartbeat_interval_s", "positive"),
            # One in-flight transaction plus the quiet time after a timeout must fit.
            (
                self.heartbeat_deadline_s > 1.5 * self.timeout_s,
                "heartbeat_deadline_s",
                "longer than 1.5 x timeout_s",
            ),
            (self.poll_tick_s > 0, "poll_tick_s", "positive"),
            (self.poll_max_age_s > 0, "poll_max_age_s", "positive"),
            (0 < self.poll_target_load <= 1, "poll_target_load", "in (0, 1]"),
        ]
        for ok, name, wanted in checks:
            if not ok:
                raise ValueError(f"{name} must be {wanted}, not {getattr(self, name)!r}")

    @property
    def bits_per_char(self) -> int:
        """Start bit, data bits, parity bit (if any) and stop bits of one character on the wire."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def wire_time_s(self, request_bytes: int, reply_bytes: int) -> float:
        """Line time of one transaction: both frames and the 3.5-character gap after each."""
        return (request_bytes + reply_bytes + 2 * plan.FRAME_GAP_CHARS) * self.bits_per_char / self.baudrate

    @property
    def is_tcp(self) -> bool:
        """True for ``tcp://`` ports (an RS485-Ethernet gateway speaking RTU framing)."""
        return self.port.startswith("tcp://")

    @property
    def tcp_address(self) -> tuple[str, int]:
        """``(host, port)`` of a ``tcp://`` port."""
        parts = urlsplit(self.port)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError(f"port {self.port!r} must look like tcp://HOST:PORT")
        return parts.hostname, port


#: The window over which :meth:`ModbusBus.load` says how full the line is.
LOAD_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BusStats:
    """Counters since the bus was created (bytes are RTU frames incl. address and CRC)."""

    transactions: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: int = 0
    timeouts: int = 0
    reconnects: int = 0
    heartbeats: int = 0
    #: Time the line was busy with our transactions (request sent to answer or timeout), in µs.
    busy_us: int = 0
