"""A private mosquitto broker on 127.0.0.1 for tests.

Each :class:`Mosquitto` has its own config, password file and log in a temp
directory, listens on a free port (kept across :meth:`restart`, so clients can
reconnect to the same address), and is stopped by its PID. Every wait is
bounded. A missing ``mosquitto`` binary FAILS the test with the install hint:
CI installs it, so a skip would hide a broken CI image.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from .tls_support import TestPki

INSTALL_HINT = "apt-get install -y --no-install-recommends mosquitto mosquitto-clients"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 3.0


def find_binary(name: str) -> str:
    """Path of a mosquitto tool; fails the test with the install hint when it is missing."""
    # Debian puts the broker in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed; the MQTT tests need it: {INSTALL_HINT}", pytrace=False)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process; ``start``/``kill``/``restart``/``stop``."""

    host = "127.0.0.1"

    def __init__(
        self, workdir: Path, *, users: dict[str, str] | None = None, tls: TestPki | None = None
    ) -> None:
        self.binary = find_binary("mosquitto")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        #: The certificates of a TLS listener (None: plain TCP); clients get ``client_tls()``.
        self.tls = tls
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if tls is not None:
            lines += [f"cafile {tls.ca_file}", f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, mosquitto would drop to the "mosquitto" user, which may not
            # exist or may not read our temp files.
            lines.append("user root")
        if users:
            password_file = workdir / "passwd"
            tool = find_binary("mosquitto_passwd")
            for i, (user, password) in enumerate(users.items()):
                args = [tool, "-b", *(["-c"] if i == 0 else []), str(password_file), user, password]
                subprocess.run(args, check=True, capture_output=True, timeout=10)
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def client_tls(self) -> ssl.SSLContext | None:
        """The TLS context a test client needs for this broker (None: plain TCP)."""
        return None if self.tls is None else self.tls.client_context()

    @property
    def pid(self) -> int | None:
        """The broker's PID while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Run the broker and wait (bounded) until it accepts connections."""
        if self.pid is not None:
            return
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()  # the child holds its own copy
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on port {self.port} in {START_TIMEOUT_S} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL by PID (a crash, as far as clients can tell) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def restart(self) -> None:
        """Start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 10) -> str:
        """The last lines the broker printed (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def publish(
        self, topic: str, payload: str, *, retain: bool = False, user: tuple[str, str] | None = None
    ) -> None:
        """Publish with ``mosquitto_pub`` (QoS 1, so it returns once the broker has it)."""
        args = [find_binary("mosquitto_pub"), "-h", self.host, "-p", str(self.port), "-q", "1"]
        args += ["-t", topic, "-m", payload, *(["-r"] if retain else [])]
        if user is not None:
            args += ["-u", user[0], "-P", user[1]]
        subprocess.run(args, check=True, capture_output=True, timeout=5)
