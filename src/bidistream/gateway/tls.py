"""The local CA and server certificate the front door needs (the official bidi client has no h2c).

Created once in the data dir and reused, so a client that trusted the CA
(``export SSL_CERT_FILE=<data-dir>/ca.pem``) keeps trusting it across restarts.
The leaf names ``localhost`` *and* ``127.0.0.1``: awscrt sends the host, even an
IP, as SNI and checks it against the certificate (wire spec, surprise 13).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TLSFiles", "ensure_certificates", "server_context"]

CA_NAME = "ca.pem"
CA_KEY = "ca.key"
CERT_NAME = "server.pem"
KEY_NAME = "server.key"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def ensure_certificates(data_dir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> TLSFiles:
    """Return the CA and leaf in ``data_dir``, creating them on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(data_dir / CA_NAME, data_dir / CERT_NAME, data_dir / KEY_NAME)
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bidistream local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(data_dir / CA_KEY, ca_key)
    _write_key(files.key, key)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


TRUST_BUNDLE_NAME = "trust-bundle.pem"


def system_ca_file() -> Path | None:
    """The platform's CA bundle, so exporting ours never drops every public CA from a shell."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        import certifi
    except ImportError:
        return None
    return Path(certifi.where())


def ensure_trust_bundle(data_dir: Path) -> Path:
    """A PEM bundle of the system CAs plus the local CA, rewritten when either changes.

    SSL_CERT_FILE replaces the whole trust store of every program in the shell; pointing it at the
    local CA alone made every other HTTPS call from that shell fail verification.
    """
    files = ensure_certificates(data_dir)
    system = system_ca_file()
    parts = [system.read_bytes().rstrip(b"\n") + b"\n"] if system else []
    parts.append(files.ca.read_bytes())
    data = b"".join(parts)
    bundle = data_dir / TRUST_BUNDLE_NAME
    if not bundle.exists() or bundle.read_bytes() != data:
        tmp = bundle.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(bundle)
    return bundle


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS 1.2+ offering ALPN ``h2`` first (bidi client) and ``http/1.1`` (boto3, browsers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
