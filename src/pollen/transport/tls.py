"""TLS credentials for gRPC, checked at start so that problems are named, not guessed."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from pollen.errors import ConfigurationError
from pollen.transport.keys import read_credential


def load_certificate(path: Path) -> tuple[bytes, x509.Certificate]:
    data = read_credential(path, "certificate")
    try:
        return data, x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigurationError(
            f"{path}: not a PEM certificate; expected '-----BEGIN CERTIFICATE-----'"
        ) from None


def _names(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def covers(certificate: x509.Certificate, host: str) -> bool:
    """True when ``host`` (a name or an IP address) is among the certificate's SANs."""
    names = _names(certificate)
    try:
        return ipaddress.ip_address(host) in [ipaddress.ip_address(n) for n in names if _is_ip(n)]
    except ValueError:
        return host.lower() in (n.lower() for n in names if not _is_ip(n))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_validity(certificate: x509.Certificate, path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now > certificate.not_valid_after_utc:
        raise ConfigurationError(
            f"{path}: certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}; "
            "generate a new one (pollen keys generate)"
        )
    if now < certificate.not_valid_before_utc:
        raise ConfigurationError(
            f"{path}: certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
        )


@dataclass(frozen=True)
class ServerTls:
    """The SuperLink's certificate files: CA certificate, server certificate, server key."""

    ca_cert: Path
    cert: Path
    key: Path

    def credentials(self, hosts: list[str]) -> grpc.ServerCredentials:
        """Server credentials, after checking the files and that the SANs cover ``hosts``."""
        _, ca = load_certificate(self.ca_cert)
        cert_pem, cert = load_certificate(self.cert)
        key_pem = read_credential(self.key, "TLS key")
        try:
            key = serialization.load_pem_private_key(key_pem, None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{self.key}: not an unencrypted PEM private key ({exc})"
            ) from None
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ConfigurationError(f"{self.key} is not the key of {self.cert}")
        _check_validity(cert, self.cert)
        _check_validity(ca, self.ca_cert)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise ConfigurationError(f"{self.cert} is not signed by {self.ca_cert}") from None
        for host in hosts:
            if host not in ("0.0.0.0", "::", "") and not covers(cert, host):
                raise ConfigurationError(
                    f"{self.cert} does not cover {host} (it names {', '.join(_names(cert))}); "
                    f"generate one that does: pollen keys generate --san {host}"
                )
        return grpc.ssl_server_credentials([(key_pem, cert_pem)])


def channel_credentials(root_certificates: Path) -> grpc.ChannelCredentials:
    """Client credentials that trust only ``root_certificates`` (the example's ca.crt)."""
    data, ca = load_certificate(root_certificates)
    _check_validity(ca, root_certificates)
    return grpc.ssl_channel_credentials(root_certificates=data)
