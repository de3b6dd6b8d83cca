"""The console's own certificate: self-signed, made on first start, kept in its state
directory.

A console listening beyond loopback serves HTTPS; without a certificate from the
owner it makes one (EC P-256, valid 825 days, the machine's names and the listen
address as subject alternative names) and keeps it with its key (mode 0600) in the
state directory, so its fingerprint stays the same across restarts: the owner
compares the fingerprint the console prints with the one the browser shows once,
and provisioning QR codes carry it for devices and set-up tools to pin. A
certificate that has expired or will within a week is replaced (a new fingerprint,
printed at start).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

from safething.files import write_private

__all__ = ["CERT_FILE", "KEY_FILE", "self_signed_certificate"]

CERT_FILE = "console-cert.pem"
KEY_FILE = "console-key.pem"
VALID_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=7)


def self_signed_certificate(state_dir: Path, bind: str) -> tuple[str, str]:
    """Paths of the certificate and key in ``state_dir``, made if missing or expiring."""
    from cryptography import x509

    cert_path, key_path = state_dir / CERT_FILE, state_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            now = datetime.datetime.now(datetime.UTC)
            if cert.not_valid_after_utc - now > RENEW_BEFORE:
                return str(cert_path), str(key_path)
        except ValueError:
            pass  # unreadable: make a new one
    cert_pem, key_pem = _make(bind)
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)
    return str(cert_path), str(key_path)


def _make(bind: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname() or "safething"
    names: list[x509.GeneralName] = [
        x509.DNSName(host),
        x509.DNSName(f"{host}.local"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
        if not address.is_unspecified and not address.is_loopback:
            names.append(x509.IPAddress(address))
    except ValueError:
        if bind and bind not in (host, "localhost"):
            names.append(x509.DNSName(bind))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, host),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SAFEthing console (self-signed)"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
