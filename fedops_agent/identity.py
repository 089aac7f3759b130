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
    """The SuperNode identity of an agent (EC P-256, OpenSSH format, as Flower's node auth wants):
    the private key file (created once) and the public key line.

    P-256 rather than the P-384 of Flower's example script: the SuperNode signs every Fleet request
    and the run's SuperLink verifies it (a phase is 60 to 115 of them), and P-256 signs in 25 us and
    verifies in 73 us against P-384's 154 and 332 (cryptography 50, the 2-core dev VM); verification
    was the largest single cost in the SuperLink's sampled CPU. Keys made earlier stay P-384 and
    keep working: Flower accepts any NIST curve."""
    private_path, public_path = directory / "supernode-key", directory / "supernode-key.pub"
    if not private_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                       serialization.NoEncryption()))
        public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH))
    return private_path, public_path.read_text(encoding="ascii").strip()
