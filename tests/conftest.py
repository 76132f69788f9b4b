"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mosquitto_support import Mosquitto
from .tls_support import TestPki, make_test_pki


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port for one test."""
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    """A test CA and a server certificate for 127.0.0.1 (made by openssl)."""
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: TestPki) -> Iterator[Mosquitto]:
    """A real mosquitto that speaks only TLS, with the test CA's server certificate."""
    b = Mosquitto(tmp_path / "mosquitto-tls", tls=pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()
