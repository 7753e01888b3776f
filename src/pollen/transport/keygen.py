"""Development credentials in the layout of Flower's client-authentication example: a CA,
a server certificate, key pairs, a CSV.

``certificates/``: ca.crt, ca.key, server.pem, server.key.
``keys/``: server_credentials(.pub), client_credentials_N(.pub), client_public_keys.csv.
Node and server key pairs are ECDSA P-384 in OpenSSH format, as
``ssh-keygen -t ecdsa -b 384`` writes them. Private keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollen.errors import ConfigurationError

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pollen development"),
        ]
    )


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ssh_pair(comment: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b" " + comment.encode() + b"\n"


def tls_files(sans: list[str]) -> dict[str, tuple[bytes, bool]]:
    """CA and server certificate files: name -> (content, is_private)."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("Pollen development CA")
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = list(dict.fromkeys([*DEFAULT_SANS, *sans]))
    server = (
        _certificate(_name("localhost"), ca_name, server_key.public_key(), ca_key)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    return {
        "certificates/ca.crt": (ca.public_bytes(pem), False),
        "certificates/ca.key": (_pem_key(ca_key), True),
        "certificates/server.pem": (server.public_bytes(pem), False),
        "certificates/server.key": (_pem_key(server_key), True),
    }


def key_files(clients: int) -> dict[str, tuple[bytes, bool]]:
    """Server and client key pairs and the allow-list CSV: name -> (content, is_private)."""
    files: dict[str, tuple[bytes, bool]] = {}
    private, public = _ssh_pair("pollen-superlink")
    files["keys/server_credentials"] = (private, True)
    files["keys/server_credentials.pub"] = (public, False)
    publics = []
    for index in range(1, clients + 1):
        private, public = _ssh_pair(f"pollen-client-{index}")
        files[f"keys/client_credentials_{index}"] = (private, True)
        files[f"keys/client_credentials_{index}.pub"] = (public, False)
        publics.append(public.strip())
    # The example's layout: every client key on one line, comma-separated.
    files["keys/client_public_keys.csv"] = (b",".join(publics) + b"\n", False)
    return files


def generate(out: Path, clients: int, sans: list[str], force: bool = False) -> list[Path]:
    """Write all development credentials under ``out``; refuse to overwrite unless ``force``."""
    if clients < 0:
        raise ConfigurationError(f"number of clients must be >= 0, got {clients}")
    files = {**tls_files(sans), **key_files(clients)}
    targets = [out / name for name in files]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise ConfigurationError(
            f"{existing[0]} already exists ({len(existing)} files would be overwritten); "
            "pass --force to replace them or --out to write elsewhere"
        )
    for (name, (content, private)), path in zip(files.items(), targets, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        mode = 0o600 if private else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(path, mode)
        del name
    return targets
