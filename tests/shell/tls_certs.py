"""Test certificates made on the spot with the openssl command: a CA, a
server certificate it signed (for 127.0.0.1 and localhost) and a client
certificate it signed (for mutual TLS). EC P-256 keys: made in milliseconds."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path            # the CA certificate (the bundle peers trust)
    ca_key: Path
    cert: Path          # server certificate, SAN IP:127.0.0.1, DNS:localhost
    key: Path
    client_cert: Path   # client certificate (CN=trunk)
    client_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _leaf(directory: Path, name: str, subject: str, ca: Path, ca_key: Path, ext: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extfile = directory / f"{name}.ext"
    extfile.write_text(ext)
    _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-subj", subject, "-out", str(csr), cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", "2", "-sha256", "-extfile", str(extfile), "-out", str(cert), cwd=directory)
    return cert, key


DEFAULT_SAN = "IP:127.0.0.1,DNS:localhost"


def make_pki(directory: Path, name: str = "babelsip test CA", san: str = DEFAULT_SAN) -> Pki:
    """A CA and the certificates it signed; `san`: the server
    certificate's subjectAltName (openssl's syntax)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    cert, key = _leaf(directory, "server", "/CN=localhost", ca, ca_key,
                      f"subjectAltName={san}\n"
                      "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                      "extendedKeyUsage=serverAuth,clientAuth\n")
    client_cert, client_key = _leaf(directory, "client", "/CN=trunk", ca, ca_key,
                                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                    "extendedKeyUsage=clientAuth\n")
    return Pki(ca, ca_key, cert, key, client_cert, client_key)


def self_signed(directory: Path, san: str = DEFAULT_SAN) -> tuple[Path, Path]:
    """A self-signed server certificate and its key (a trunk with no CA)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "self.pem", directory / "self.key"
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=self-signed trunk",
         "-addext", f"subjectAltName={san}", cwd=directory)
    return cert, key


def openssl_fingerprint(cert: Path) -> str:
    """`sha256:AB:CD:...` as `openssl x509 -fingerprint -sha256` prints it."""
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return "sha256:" + out.strip().partition("=")[2]


def issue(pki: Pki, directory: Path, san: str, name: str = "server") -> tuple[Path, Path]:
    """Another server certificate from `pki`'s CA, for `san`."""
    directory.mkdir(parents=True, exist_ok=True)
    return _leaf(directory, name, "/CN=babelsip test server", pki.ca, pki.ca_key,
                 f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                 "extendedKeyUsage=serverAuth,clientAuth\n")
