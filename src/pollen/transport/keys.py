"""Public and private keys: loading (OpenSSH and PEM), fingerprints, signatures.

Accepted: ECDSA P-256/P-384/P-521 and Ed25519, as ``ssh-keygen`` writes them
(OpenSSH) or as PEM. Every loading error names the file and the expected format.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pollen.errors import ConfigurationError

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

PASSPHRASE_ENV = "POLLEN_KEY_PASSPHRASE"
EXPECTED_PUBLIC = (
    "expected an OpenSSH public key ('ecdsa-sha2-nistp384 AAAA...' or 'ssh-ed25519 AAAA...') "
    "or a PEM public key"
)
EXPECTED_PRIVATE = "expected an OpenSSH or PEM private key (ECDSA P-256/P-384/P-521 or Ed25519)"
_CURVES = ("secp256r1", "secp384r1", "secp521r1")
# an OpenSSH public key at the start of the file, of a line, or after a comma
_KEY_START = re.compile(rb"(?:^|[,\n])\s*(?:ecdsa-sha2-nistp\d+|ssh-ed25519|sk-\S+) ")
_OPENSSH_BODY = re.compile(rb"-----[A-Z ]+-----|\s")


def _check_type(key: object, where: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise ConfigurationError(
                f"{where}: ECDSA curve {key.curve.name} is not supported; use P-256, P-384 or P-521"
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return
    kind = type(key).__name__.removeprefix("_").replace("PublicKey", "").replace("PrivateKey", "")
    raise ConfigurationError(
        f"{where}: {kind or 'this'} keys are not supported; use ECDSA "
        "(ssh-keygen -t ecdsa -b 384) or Ed25519 (ssh-keygen -t ed25519)"
    )


def parse_public_key(text: str, where: str) -> PublicKey:
    """One public key from its OpenSSH line or PEM block; ``where`` names it in errors."""
    data = text.strip().encode()
    if b"PRIVATE KEY" in data:
        raise ConfigurationError(
            f"{where}: this is a private key; give the public key (the .pub file) instead"
        )
    try:
        if data.startswith(b"-----BEGIN"):
            key: object = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"{where}: not a public key ({exc}); {EXPECTED_PUBLIC}") from None
    _check_type(key, where)
    return key  # type: ignore[return-value]


def read_credential(path: Path, what: str) -> bytes:
    """A key or certificate file's bytes; missing or unreadable files name the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what} file ({exc.strerror})") from None


def _key_count(data: bytes) -> int:
    """How many public keys ``data`` holds, as an allow-list lays them out."""
    return len(_KEY_START.findall(data)) + data.count(b"-----BEGIN PUBLIC KEY-----")


def _looks_like_allowlist(data: bytes, path: Path) -> bool:
    return _key_count(data) > 1 or (path.suffix.lower() == ".csv" and _key_count(data) > 0)


def load_public_key(path: Path) -> PublicKey:
    data = read_credential(path, "public key")
    if _key_count(data) > 1:
        raise ConfigurationError(
            f"{path}: this is an allow-list of {_key_count(data)} public keys, not one public "
            "key; give a single public key file here (a .pub file)"
        )
    return parse_public_key(data.decode(errors="replace"), str(path))


def _is_encrypted(data: bytes) -> bool:
    """Whether a private key file is encrypted (PEM headers; OpenSSH's cipher name)."""
    if b"OPENSSH PRIVATE KEY" not in data:
        return b"ENCRYPTED" in data
    try:
        blob = base64.b64decode(_OPENSSH_BODY.sub(b"", data))
    except ValueError:
        return False
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic) or len(blob) < len(magic) + 4:
        return False
    length = int.from_bytes(blob[len(magic) : len(magic) + 4], "big")
    return blob[len(magic) + 4 : len(magic) + 4 + length] != b"none"


def load_private_key(path: Path) -> PrivateKey:
    """A private key file; encrypted keys take their passphrase from $POLLEN_KEY_PASSPHRASE."""
    data = read_credential(path, "private key")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    password = passphrase.encode() if passphrase else None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key: object = serialization.load_ssh_private_key(data, password)
        elif b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password)
        elif _looks_like_allowlist(data, path):
            raise ConfigurationError(
                f"{path}: this is an allow-list of public keys, not a private key; give the "
                "private key file here (the key pair's file without .pub)"
            )
        elif data.lstrip().startswith((b"ecdsa-", b"ssh-", b"-----BEGIN PUBLIC")):
            raise ConfigurationError(
                f"{path}: this is a public key; give the private key (the file without .pub)"
            )
        else:
            raise ValueError("no private key block found")
    except TypeError:
        if password is not None:
            raise ConfigurationError(
                f"{path}: key is not encrypted; unset {PASSPHRASE_ENV}"
            ) from None
        raise ConfigurationError(
            f"{path}: private key is encrypted; set {PASSPHRASE_ENV} to its passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if password is not None and _is_encrypted(data):
            # cryptography says "Corrupt data: broken checksum" for an OpenSSH key
            raise ConfigurationError(
                f"{path}: wrong passphrase: ${PASSPHRASE_ENV} does not decrypt this private "
                f"key; set {PASSPHRASE_ENV} to the passphrase the key was made with"
            ) from None
        raise ConfigurationError(
            f"{path}: not a usable private key ({exc}); {EXPECTED_PRIVATE}"
        ) from None
    _check_type(key, str(path))
    return key  # type: ignore[return-value]


def public_bytes(key: PublicKey) -> bytes:
    """The key in OpenSSH one-line form (how it travels and is fingerprinted)."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(key: PublicKey) -> str:
    """``SHA256:...``, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_bytes(key).split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _hash_for(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(curve.key_size, hashes.SHA512())


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(_hash_for(key.curve)))


def verify(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(_hash_for(key.curve)))
    except InvalidSignature:
        return False
    return True


def check_pair(
    private: PrivateKey, public: PublicKey, private_path: Path, public_path: Path
) -> None:
    """Refuse a private key and a public key that do not belong together."""
    if public_bytes(private.public_key()) != public_bytes(public):
        raise ConfigurationError(
            f"{public_path} is not the public key of {private_path}; pass the matching .pub file"
        )
