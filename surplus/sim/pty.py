"""A virtual serial cable, in process: two pty pairs joined by an asyncio relay.

Like ``socat pty,link=... pty,...`` without socat. The simulator opens
:attr:`PtyLink.server_path`; clients open :attr:`PtyLink.path`, a stable
symlink to the other pair's slave. :meth:`PtyLink.vanish` unplugs the client
end (open clients get I/O errors, the path disappears); :meth:`PtyLink.restore`
plugs a fresh one in at the same path.

With ``baudrate`` (and ``parity``) set, the link behaves like a line whose
devices listen at that speed: bytes from a client whose port is set to another
baud rate or parity are dropped, as a real UART would hear only framing errors
and the box would answer nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import tempfile
import termios
import tty
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CHUNK = 4096
#: Linux ``TCGETS2`` (``_IOR('T', 0x2A, struct termios2)``, 44 bytes): gives any baud rate as a number.
_TCGETS2 = (2 << 30) | (44 << 16) | (ord("T") << 8) | 0x2A
_TERMIOS2_SPEEDS = struct.Struct("=II")
_TERMIOS2_SPEEDS_AT = 36
#: termios speed constant -> baud rate, for where TCGETS2 is not available.
_SPEED_CONSTANTS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
    if hasattr(termios, f"B{rate}")
}


def line_settings(fd: int) -> tuple[int | None, str]:
    """(baud rate, parity "N"/"E"/"O") a tty is set to; the rate is None when it cannot be told."""
    cflag = termios.tcgetattr(fd)[2]
    parity = ("O" if cflag & termios.PARODD else "E") if cflag & termios.PARENB else "N"
    try:
        raw = fcntl.ioctl(fd, _TCGETS2, bytes(44))
        _, speed = _TERMIOS2_SPEEDS.unpack_from(raw, _TERMIOS2_SPEEDS_AT)
        return int(speed), parity
    except OSError:
        return _SPEED_CONSTANTS.get(termios.tcgetattr(fd)[5]), parity


@dataclass(slots=True)
class _Pair:
    master: int
    slave: int  # held open so the master never sees EIO while no client is attached
    name: str

    @classmethod
    def open(cls) -> _Pair:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass unchanged
        os.set_blocking(master, False)
        return cls(master=master, slave=slave, name=os.ttyname(slave))

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyLink:
    """Server end and client end of a virtual RS485 line."""

    def __init__(
        self, link_path: str | None = None, *, baudrate: int | None = None, parity: str = "N"
    ) -> None:
        #: The line's speed and parity; None: any client setting passes.
        self.baudrate = baudrate
        self.parity = parity.upper()[:1]
        self._mismatch_logged: tuple[int | None, str] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if link_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="surplus-sim-")
            link_path = os.path.join(self._tmpdir.name, "amtron")
        self.path = link_path
        self._server: _Pair | None = None
        self._client: _Pair | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def server_path(self) -> str:
        """Device the simulator's serial server opens."""
        if self._server is None:
            raise RuntimeError("the pty link is not open")
        return self._server.name

    @property
    def present(self) -> bool:
        """True while the client end exists."""
        return self._client is not None

    def open(self) -> None:
        """Create both pairs and the symlink; relay in the running loop."""
        self._loop = asyncio.get_running_loop()
        self._server = _Pair.open()
        self._loop.add_reader(self._server.master, self._relay_from_server)
        self.restore()

    def vanish(self) -> None:
        """Unplug the client end: the symlink goes away and open clients get I/O errors."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._client is not None and self._loop is not None:
            self._loop.remove_reader(self._client.master)
            self._client.close()
        self._client = None

    def restore(self) -> None:
        """Plug a fresh client end in at the same path."""
        if self._client is not None:
            return
        assert self._loop is not None
        self._client = _Pair.open()
        self._loop.add_reader(self._client.master, self._relay_from_client)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(self._client.name, tmp)
        os.replace(tmp, self.path)  # atomic: a client never sees a half-made link

    def close(self) -> None:
        """Remove everything (idempotent)."""
        self.vanish()
        if self._server is not None and self._loop is not None:
            self._loop.remove_reader(self._server.master)
            self._server.close()
        self._server = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _relay_from_server(self) -> None:
        assert self._server is not None
        data = self._read(self._server.master)
        if data and self._client is not None:
            self._write(self._client.master, data)

    def _relay_from_client(self) -> None:
        assert self._client is not None
        data = self._read(self._client.master)
        if data and self._server is not None and self._client_in_step():
            self._write(self._server.master, data)

    def _client_in_step(self) -> bool:
        """True when the client's port is set to the line's baud rate and parity (or none is enforced)."""
        if self.baudrate is None or self._client is None:
            return True
        try:
            theirs = line_settings(self._client.slave)
        except (OSError, termios.error):
            return True
        rate, parity = theirs
        if (rate is None or rate == self.baudrate) and parity == self.parity:
            self._mismatch_logged = None
            return True
        if self._mismatch_logged != theirs:
            log.info(
                "pty: client at %s baud parity %s, the line runs %d baud parity %s: its bytes are noise",
                rate,
                parity,
                self.baudrate,
                self.parity,
            )
            self._mismatch_logged = theirs
        return False

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            log.debug("pty read failed: %s", exc)
            return b""

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        # Modbus frames are a few hundred bytes at most; the pty buffer holds kilobytes.
        try:
            os.write(fd, data)
        except OSError as exc:
            log.warning("pty relay dropped %d bytes: %s", len(data), exc)
