"""A throwaway certificate authority for TLS tests, made with the ``openssl`` command.

:func:`make_test_pki` writes a CA and a server certificate for ``127.0.0.1``
(signed by that CA, with the address as a subject alternative name, as a
verifying client checks it) into a directory. Every call is bounded in time; a
missing ``openssl`` FAILS the test with the install hint (CI installs it).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install -y --no-install-recommends openssl"
OPENSSL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TestPki:
    """The files of one test CA and the server certificate it signed."""

    __test__ = False  # not a pytest test class

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.fail(f"openssl is not installed; the TLS tests need it: {INSTALL_HINT}", pytrace=False)
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, timeout=OPENSSL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")


def make_test_pki(directory: Path, host: str = "127.0.0.1") -> TestPki:
    """A CA and a server certificate for ``host`` (an IP address), valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = directory / "server.ext"
    ext.write_text(
        f"subjectAltName = IP:{host}\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
        "keyUsage = digitalSignature, keyEncipherment\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n"
    )
    # The CA's extensions spelled out, so a strict verifier (X509_STRICT) accepts it on any openssl.
    ca_ext = (
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=surplus test CA", *ca_ext, cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={host}", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", str(ext), cwd=directory)  # fmt: skip
    return TestPki(
        ca_file=directory / "ca.pem", cert_file=directory / "server.pem", key_file=directory / "server.key"
    )
