"""Keys, allow-lists, certificates and `pollen keys generate`.

Bad input gives one line that names the file and says what was expected.
"""

from __future__ import annotations

import datetime
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pollen.errors import ConfigurationError
from pollen.superlink.allowlist import AllowList, parse_allowlist
from pollen.transport import keys
from pollen.transport.keygen import generate, tls_files
from pollen.transport.tls import ServerTls, channel_credentials, covers, load_certificate
from tests.auth_helpers import Seed, write_key_pair
from tests.conftest import APPS_DIR
from tests.test_cli_errors import run, run_superlink

PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
PKCS8 = serialization.PrivateFormat.PKCS8


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=3, unlisted=1)


def error_of(call: object, *args: object) -> str:
    """The message of the `ConfigurationError` that ``call(*args)`` raises: one line."""
    with pytest.raises(ConfigurationError) as caught:
        call(*args)  # type: ignore[operator]
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def new_key(kind: str) -> keys.PrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def openssh_line(key: keys.PrivateKey, comment: str = "") -> str:
    line = keys.public_bytes(key.public_key()).decode()
    return f"{line} {comment}".strip()


def pem_public(key: keys.PrivateKey | rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(PEM, SPKI).decode()


KINDS = ["ed25519", "p256", "p384", "p521"]


# allow-lists and public keys


def test_the_seed_csv_holds_every_client_key(seed: Seed) -> None:
    assert len(seed.csv.read_text().splitlines()) == 1  # the seed's layout: one line
    expected = {
        keys.fingerprint(keys.load_public_key(seed.client_key(i).with_suffix(".pub")))
        for i in (1, 2, 3)
    }
    assert set(AllowList.load(seed.csv).keys) == expected


def test_one_key_per_line_with_comments_and_csv_lines_mix(tmp_path: Path) -> None:
    a, b, c, d = (new_key(kind) for kind in KINDS)
    path = tmp_path / "allowed.txt"
    path.write_text(
        "# nodes of the consortium\n"
        f"{openssh_line(a, 'alice@lab')}\n"
        "\n"
        f"   {openssh_line(b)}   # bob, added 2024-05-01\n"
        f"{openssh_line(c)},{openssh_line(d, 'dave')}\n"
        "# the end\n"
    )
    allowed = AllowList.load(path)
    assert set(allowed.keys) == {keys.fingerprint(k.public_key()) for k in (a, b, c, d)}


@pytest.mark.parametrize("kind", KINDS)
def test_every_supported_key_type_is_accepted_in_openssh_and_pem_form(
    tmp_path: Path, kind: str
) -> None:
    key = new_key(kind)
    fingerprint = keys.fingerprint(key.public_key())
    assert keys.fingerprint(keys.parse_public_key(openssh_line(key, "me"), "x")) == fingerprint
    assert keys.fingerprint(keys.parse_public_key(pem_public(key), "x")) == fingerprint
    pem_file = tmp_path / "key.pem"
    pem_file.write_text(pem_public(key))
    assert keys.fingerprint(keys.load_public_key(pem_file)) == fingerprint
    allowed = tmp_path / "allowed.csv"
    allowed.write_text(openssh_line(key) + "\n")
    assert fingerprint in AllowList.load(allowed)


def test_an_allow_list_may_hold_pem_public_keys(tmp_path: Path) -> None:
    # docs/security.md: the allow-list reads "ECDSA P-256/P-384/P-521 and Ed25519 keys in
    # OpenSSH or PEM form"
    pem_key, ssh_key = new_key("p384"), new_key("ed25519")
    path = tmp_path / "allowed.txt"
    path.write_text(f"{pem_public(pem_key)}{openssh_line(ssh_key)}\n")
    expected = {keys.fingerprint(k.public_key()) for k in (pem_key, ssh_key)}
    assert set(AllowList.load(path).keys) == expected


def test_a_malformed_line_is_named_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "allowed.csv"
    path.write_text(f"# ok\n{openssh_line(new_key('p384'))}\necdsa-sha2-nistp384 AAAAnot-base64\n")
    message = error_of(AllowList.load, path)
    assert f"{path} line 3" in message
    assert "expected an OpenSSH public key" in message


def test_a_malformed_key_in_a_one_line_csv_names_its_entry(tmp_path: Path) -> None:
    # issue 12: Flower's client-authentication example puts every key on line 1, and the
    # error said only "line 1"
    good = [openssh_line(new_key("p384"), f"pollen-client-{i}") for i in (1, 2)]
    broken = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAA-cut pollen-client-3"
    path = tmp_path / "client_public_keys.csv"
    path.write_text(",".join([*good, broken]) + "\n")

    message = error_of(AllowList.load, path)

    assert message.startswith(
        f"{path} line 1 entry 3 of 3 ('ecdsa-sha2-nistp384 AAAAE2Vj... pollen-client-3'): "
        "not a public key"
    )


@pytest.mark.parametrize("form", ["openssh", "pem"])
def test_rsa_keys_are_refused_as_unsupported(tmp_path: Path, form: str) -> None:
    public = rsa.generate_private_key(65537, 2048).public_key()
    text = (
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        if form == "openssh"
        else public.public_bytes(PEM, SPKI)
    )
    path = tmp_path / "rsa.pub"
    path.write_bytes(text)
    message = error_of(keys.load_public_key, path)
    assert str(path) in message
    assert "RSA keys are not supported" in message
    if form == "openssh":
        assert f"{path} line 1" in error_of(AllowList.load, path)


def test_an_unsupported_curve_is_refused() -> None:
    message = error_of(
        keys.parse_public_key, pem_public(ec.generate_private_key(ec.SECP256K1())), "k"
    )
    assert "secp256k1 is not supported" in message


def test_a_private_key_in_the_allow_list_is_called_a_private_key(
    tmp_path: Path, seed: Seed
) -> None:
    path = tmp_path / "allowed.csv"
    path.write_text(seed.csv.read_text() + seed.client_key(1).read_text())
    message = error_of(AllowList.load, path)
    assert f"{path} line 2" in message
    assert "this is a private key" in message
    assert ".pub" in message


def test_a_missing_allow_list_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    assert error_of(AllowList.load, missing) == f"{missing}: allow-list file not found"


def test_an_empty_allow_list_admits_nobody(tmp_path: Path) -> None:
    path = tmp_path / "allowed.csv"
    path.write_text("# nobody yet\n")
    assert parse_allowlist(path.read_text(), path) == {}


# private keys


def test_a_missing_private_key_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "id_ecdsa"
    assert error_of(keys.load_private_key, missing) == f"{missing}: private key file not found"


@pytest.mark.parametrize("form", ["openssh", "pem"])
def test_a_public_key_given_as_private_key_is_called_a_public_key(
    tmp_path: Path, form: str
) -> None:
    key = new_key("p384")
    path = tmp_path / "id.pub"
    path.write_text(openssh_line(key) if form == "openssh" else pem_public(key))
    message = error_of(keys.load_private_key, path)
    assert str(path) in message
    assert "this is a public key" in message


def test_a_file_that_is_no_key_says_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    message = error_of(keys.load_private_key, path)
    assert str(path) in message
    assert "expected an OpenSSH or PEM private key" in message


def test_an_rsa_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id_rsa"
    path.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            PEM, PKCS8, serialization.NoEncryption()
        )
    )
    assert "RSA keys are not supported" in error_of(keys.load_private_key, path)


@pytest.mark.parametrize("kind", KINDS)
def test_private_keys_load_in_openssh_and_pem_form(tmp_path: Path, kind: str) -> None:
    key = new_key(kind)
    ssh = write_key_pair(key, tmp_path / "id")
    pem = tmp_path / "id.pem"
    pem.write_bytes(key.private_bytes(PEM, PKCS8, serialization.NoEncryption()))
    for path in (ssh, pem):
        loaded = keys.load_private_key(path)
        keys.check_pair(loaded, keys.load_public_key(ssh.with_name("id.pub")), path, ssh)
        assert keys.verify(key.public_key(), keys.sign(loaded, b"data"), b"data")


def test_an_encrypted_pem_key_needs_the_passphrase_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key("p384")
    path = tmp_path / "id.pem"
    path.write_bytes(
        key.private_bytes(PEM, PKCS8, serialization.BestAvailableEncryption(b"s3cret"))
    )
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    message = error_of(keys.load_private_key, path)
    assert str(path) in message
    assert "encrypted" in message and keys.PASSPHRASE_ENV in message
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "s3cret")
    loaded = keys.load_private_key(path)
    assert keys.public_bytes(loaded.public_key()) == keys.public_bytes(key.public_key())


def test_an_encrypted_key_from_ssh_keygen_loads_with_the_passphrase_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/security.md: "Encrypted private keys read their passphrase from $POLLEN_KEY_PASSPHRASE";
    # ssh-keygen writes them in OpenSSH format (bcrypt KDF).
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("ssh-keygen is not installed")
    path = tmp_path / "id_ecdsa"
    subprocess.run(
        [ssh_keygen, "-q", "-t", "ecdsa", "-b", "384", "-N", "s3cret", "-C", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    message = error_of(keys.load_private_key, path)
    assert "encrypted" in message and keys.PASSPHRASE_ENV in message
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "s3cret")
    loaded = keys.load_private_key(path)
    expected = keys.load_public_key(path.with_name("id_ecdsa.pub"))
    keys.check_pair(loaded, expected, path, path.with_name("id_ecdsa.pub"))


OPENSSH_PRIVATE = serialization.PrivateFormat.OpenSSH
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL


@pytest.mark.parametrize(
    ("kind", "form"),
    [
        pytest.param("p384", OPENSSH_PRIVATE, id="p384-openssh"),
        pytest.param("ed25519", OPENSSH_PRIVATE, id="ed25519-openssh"),
        pytest.param("p384", PKCS8, id="p384-pkcs8"),
        pytest.param("ed25519", PKCS8, id="ed25519-pkcs8"),
        pytest.param("p384", TRADITIONAL, id="p384-traditional"),
    ],
)
def test_a_wrong_passphrase_is_called_a_wrong_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, form: serialization.PrivateFormat
) -> None:
    # issue 12: an OpenSSH key said "Corrupt data: broken checksum"
    path = tmp_path / "id"
    encryption = serialization.BestAvailableEncryption(b"s3cret")
    path.write_bytes(new_key(kind).private_bytes(PEM, form, encryption))
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")

    message = error_of(keys.load_private_key, path)

    assert message == (
        f"{path}: wrong passphrase: ${keys.PASSPHRASE_ENV} does not decrypt this private key; "
        f"set {keys.PASSPHRASE_ENV} to the passphrase the key was made with"
    )


def test_a_damaged_unencrypted_key_is_not_blamed_on_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "id"
    text = new_key("p384").private_bytes(PEM, PKCS8, serialization.NoEncryption()).decode()
    lines = text.splitlines()
    path.write_text("\n".join([lines[0], lines[1][:-8] + "AAAAAAAA", *lines[2:]]) + "\n")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "s3cret")

    message = error_of(keys.load_private_key, path)

    assert "passphrase" not in message and "private key" in message


def test_an_allow_list_given_as_private_key_is_called_an_allow_list(seed: Seed) -> None:
    # issue 12: it said "give the private key (the file without .pub)"
    message = error_of(keys.load_private_key, seed.csv)

    assert message == (
        f"{seed.csv}: this is an allow-list of public keys, not a private key; give the "
        "private key file here (the key pair's file without .pub)"
    )


def test_an_allow_list_of_one_key_given_as_private_key_is_called_an_allow_list(
    tmp_path: Path,
) -> None:
    path = tmp_path / "client_public_keys.csv"
    path.write_text(openssh_line(new_key("p384"), "pollen-client-1") + "\n")

    assert "this is an allow-list of public keys" in error_of(keys.load_private_key, path)


def test_an_allow_list_given_as_public_key_is_called_an_allow_list(seed: Seed) -> None:
    message = error_of(keys.load_public_key, seed.csv)

    assert message.startswith(f"{seed.csv}: this is an allow-list of 3 public keys, not one")


def test_a_passphrase_for_an_unencrypted_key_is_pointed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_key_pair(new_key("p384"), tmp_path / "id")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "s3cret")
    message = error_of(keys.load_private_key, path)
    assert str(path) in message and "not encrypted" in message


def test_a_mismatched_pair_names_both_files(seed: Seed) -> None:
    private_path, public_path = seed.client_key(1), seed.client_key(2).with_suffix(".pub")
    message = error_of(
        keys.check_pair,
        keys.load_private_key(private_path),
        keys.load_public_key(public_path),
        private_path,
        public_path,
    )
    assert str(private_path) in message and str(public_path) in message


# TLS certificates


def test_the_generated_certificates_serve_loopback(seed: Seed) -> None:
    assert seed.tls.credentials(["127.0.0.1", "localhost", "::1", "0.0.0.0"]) is not None
    assert channel_credentials(seed.ca_cert) is not None


def test_a_certificate_that_does_not_cover_the_host_says_how_to_fix_it(seed: Seed) -> None:
    message = error_of(seed.tls.credentials, ["10.1.2.3"])
    assert f"{seed.server_cert} does not cover 10.1.2.3" in message
    assert "--san 10.1.2.3" in message


def sign_server_certificate(seed: Seed, path: Path, *, days: tuple[int, int]) -> Path:
    """A server certificate for the seed's key, signed by the seed's CA, valid ``days``."""
    ca_key = serialization.load_pem_private_key(seed.ca_key.read_bytes(), None)
    _, ca = load_certificate(seed.ca_cert)
    server_key = serialization.load_pem_private_key(seed.server_tls_key.read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    path.write_bytes(certificate.public_bytes(PEM))
    return path


def test_an_expired_certificate_is_named(tmp_path: Path, seed: Seed) -> None:
    expired = sign_server_certificate(seed, tmp_path / "old.pem", days=(-30, -1))
    tls = ServerTls(seed.ca_cert, expired, seed.server_tls_key)
    message = error_of(tls.credentials, ["localhost"])
    assert str(expired) in message and "expired" in message


def test_a_certificate_not_yet_valid_is_named(tmp_path: Path, seed: Seed) -> None:
    future = sign_server_certificate(seed, tmp_path / "future.pem", days=(10, 20))
    message = error_of(ServerTls(seed.ca_cert, future, seed.server_tls_key).credentials, [])
    assert str(future) in message and "not valid before" in message


def test_a_key_that_is_not_the_certificates_key_is_named(tmp_path: Path, seed: Seed) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(new_key("p384").private_bytes(PEM, PKCS8, serialization.NoEncryption()))
    message = error_of(ServerTls(seed.ca_cert, seed.server_cert, other).credentials, [])
    assert f"{other} is not the key of {seed.server_cert}" in message


def test_a_certificate_signed_by_another_ca_is_named(tmp_path: Path, seed: Seed) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(tls_files([])["certificates/ca.crt"][0])  # same CA name, other key
    message = error_of(ServerTls(other_ca, seed.server_cert, seed.server_tls_key).credentials, [])
    assert f"{seed.server_cert} is not signed by {other_ca}" in message


@pytest.mark.parametrize("which", ["ca_cert", "cert", "key"])
def test_a_file_that_is_not_pem_is_named(tmp_path: Path, seed: Seed, which: str) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("this is not PEM\n")
    files = {"ca_cert": seed.ca_cert, "cert": seed.server_cert, "key": seed.server_tls_key}
    files[which] = garbage
    message = error_of(ServerTls(**files).credentials, [])
    assert str(garbage) in message and "PEM" in message


def test_a_missing_certificate_is_named(tmp_path: Path, seed: Seed) -> None:
    missing = tmp_path / "ca.crt"
    assert error_of(channel_credentials, missing) == f"{missing}: certificate file not found"
    tls = ServerTls(seed.ca_cert, missing, seed.server_tls_key)
    assert error_of(tls.credentials, []) == f"{missing}: certificate file not found"


# keys generate


def test_generate_writes_the_seed_layout_with_private_files_0600(tmp_path: Path) -> None:
    written = generate(tmp_path, 2, [])
    names = {str(p.relative_to(tmp_path)) for p in written}
    assert names == {
        "certificates/ca.crt",
        "certificates/ca.key",
        "certificates/server.pem",
        "certificates/server.key",
        "keys/server_credentials",
        "keys/server_credentials.pub",
        "keys/client_credentials_1",
        "keys/client_credentials_1.pub",
        "keys/client_credentials_2",
        "keys/client_credentials_2.pub",
        "keys/client_public_keys.csv",
    }
    for path in written:
        private = path.suffix in (".key",) or (path.parent.name == "keys" and not path.suffix)
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if private else 0o644), f"{path}: {oct(mode)}"


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    generate(tmp_path, 1, [])
    ca = (tmp_path / "certificates" / "ca.crt").read_bytes()
    message = error_of(generate, tmp_path, 1, [])
    assert "already exists" in message and "--force" in message
    assert (tmp_path / "certificates" / "ca.crt").read_bytes() == ca
    generate(tmp_path, 1, [], force=True)
    assert (tmp_path / "certificates" / "ca.crt").read_bytes() != ca
    assert stat.S_IMODE((tmp_path / "keys" / "client_credentials_1").stat().st_mode) == 0o600


def test_generated_server_certificate_covers_loopback_and_the_given_names(tmp_path: Path) -> None:
    generate(tmp_path, 0, ["pollen.example.org", "10.1.2.3"])
    _, certificate = load_certificate(tmp_path / "certificates" / "server.pem")
    for host in ("localhost", "127.0.0.1", "::1", "pollen.example.org", "10.1.2.3"):
        assert covers(certificate, host), host
    assert not covers(certificate, "10.1.2.4")
    certs = tmp_path / "certificates"
    tls = ServerTls(certs / "ca.crt", certs / "server.pem", certs / "server.key")
    assert tls.credentials(["10.1.2.3", "pollen.example.org"]) is not None


def test_generated_keys_match_their_pairs_and_the_csv(tmp_path: Path) -> None:
    generate(tmp_path, 3, [])
    directory = tmp_path / "keys"
    csv_keys = AllowList.load(directory / "client_public_keys.csv").keys
    assert len(csv_keys) == 3
    names = ["server_credentials"] + [f"client_credentials_{i}" for i in (1, 2, 3)]
    for name in names:
        private_path, public_path = directory / name, directory / f"{name}.pub"
        private, public = keys.load_private_key(private_path), keys.load_public_key(public_path)
        keys.check_pair(private, public, private_path, public_path)
        assert (keys.fingerprint(public) in csv_keys) == name.startswith("client")


# the command line


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_keys_generate_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "seed"
    code, output = run("keys", "generate", "2", "--out", str(out))
    assert code == 0, output
    assert len(AllowList.load(out / "keys" / "client_public_keys.csv").keys) == 2
    code, output = run("keys", "generate", "2", "--out", str(out))
    assert code == 2
    line = one_error_line(output)
    assert "already exists" in line and "--force" in line


def test_superlink_with_authentication_but_no_tls_exits_with_one_line(
    tmp_path: Path, seed: Seed
) -> None:
    code, output = run_superlink(
        tmp_path / "state.db",
        "--require-client-authentication",
        str(seed.csv),
        str(seed.server_credentials),
        str(seed.server_credentials.with_suffix(".pub")),
    )
    assert code == 2
    assert "TLS" in one_error_line(output)


def test_superlink_with_a_certificate_that_does_not_cover_its_address(
    tmp_path: Path, seed: Seed
) -> None:
    code, output = run(
        "superlink",
        "--certificates",
        str(seed.ca_cert),
        str(seed.server_cert),
        str(seed.server_tls_key),
        "--fleet-api-address",
        "10.1.2.3:0",
        "--driver-api-address",
        "127.0.0.1:0",
        "--database",
        str(tmp_path / "state.db"),
    )
    assert code == 2
    assert "--san 10.1.2.3" in one_error_line(output)


def test_supernode_with_missing_root_certificates_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    code, output = run(
        "supernode", "numpy_apps:app", "--dir", str(APPS_DIR), "--root-certificates", str(missing)
    )
    assert code == 2
    assert str(missing) in one_error_line(output)


def test_supernode_with_a_mismatched_key_pair_names_both_files(seed: Seed) -> None:
    private, public = seed.client_key(1), seed.client_key(2).with_suffix(".pub")
    code, output = run(
        "supernode",
        "numpy_apps:app",
        "--dir",
        str(APPS_DIR),
        "--root-certificates",
        str(seed.ca_cert),
        "--authentication-keys",
        str(private),
        str(public),
    )
    assert code == 2
    line = one_error_line(output)
    assert str(private) in line and str(public) in line
