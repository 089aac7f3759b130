"""The agent's identities: its control-service credential and its SuperNode key pair."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedops_common.security import read_secret, write_private, write_secret

CREDENTIAL_FILE = "credential"


def load_credential(state_dir: Path) -> str:
    """The credential issued at enrolment ('' before the first enrolment)."""
    path = state_dir / CREDENTIAL_FILE
    return read_secret(path) if path.exists() else ""


def save_credential(state_dir: Path, credential: str) -> Path:
    """Keep the credential, readable by the agent's user only."""
    write_secret(state_dir / CREDENTIAL_FILE, credential)
    return state_dir / CREDENTIAL_FILE


def supernode_keypair(directory: Path) -> tuple[Path, str]:
    """The SuperNode identity of an agent (EC P-384, OpenSSH format, as Flower's node auth wants):
    the private key file (created once) and the public key line."""
    private_path, public_path = directory / "supernode-key", directory / "supernode-key.pub"
    if not private_path.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                       serialization.NoEncryption()))
        public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH))
    return private_path, public_path.read_text(encoding="ascii").strip()
