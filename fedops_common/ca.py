"""A small certificate authority: TLS for the control service, agents (mutual TLS) and run SuperLinks.

`fedopsctl ca init` / `fedopsctl ca issue` use it for the operator's certificates; the control
service keeps a second, internal one to give every run's SuperLink its own certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedops_common.security import write_private

CA_CERT, CA_KEY = "ca.pem", "ca.key"
CA_DAYS, LEAF_DAYS = 3650, 825


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass
class CertificateAuthority:
    """A CA certificate and key on disk (``ca.pem``, ``ca.key`` in ``directory``)."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, directory: Path, name: str = "FedOps Stack CA") -> CertificateAuthority:
        """Create a new CA; refuses to overwrite an existing one."""
        if (directory / CA_KEY).exists():
            raise FileExistsError(f"{directory / CA_KEY} exists; a CA is created once")
        key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA384()))
        write_private(directory / CA_KEY, _key_pem(key))
        _write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load the CA of ``directory``."""
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY}: not an EC key")
        return cls(directory, cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, name: str) -> CertificateAuthority:
        """The CA of ``directory``, created on first use."""
        return cls.load(directory) if (directory / CA_KEY).exists() else cls.create(directory, name)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, out_dir: Path, server_hosts: list[str] | None = None, client: bool = False,
              days: int = LEAF_DAYS) -> tuple[Path, Path]:
        """Issue a leaf certificate ``<name>.pem`` / ``<name>.key`` into ``out_dir``.

        ``server_hosts`` (DNS names or IPs) make it a server certificate; ``client`` a client one
        (mutual TLS; its common name is ``name``, e.g. the agent's device id). Both may be set.
        """
        if not server_hosts and not client:
            raise ValueError("a certificate is for a server (hosts), a client, or both")
        key = ec.generate_private_key(ec.SECP384R1())
        now = dt.datetime.now(dt.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if server_hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in server_hosts]),
                                            critical=False)
        cert = builder.sign(self.key, hashes.SHA384())
        cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
        write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

