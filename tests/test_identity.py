"""The agent's SuperNode key: the curve Flower's node auth is fast with, in the format it loads."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import (
    bytes_to_public_key,
    public_key_to_bytes,
    sign_message,
    uses_nist_ec_curve,
    verify_signature,
)

from fedops_agent.identity import supernode_keypair
from fedops_control.server.agent_servicer import SSH_PUBLIC_KEY


def test_new_key_is_p256_and_flower_signs_and_verifies_with_it(tmp_path: Path) -> None:
    private_path, public_line = supernode_keypair(tmp_path)
    assert public_line.startswith("ecdsa-sha2-nistp256 "), public_line
    assert SSH_PUBLIC_KEY.match(public_line), public_line  # what the control service accepts at enrolment
    key = serialization.load_ssh_private_key(private_path.read_bytes(), None)  # as flower-supernode loads it
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert uses_nist_ec_curve(key.public_key())
    # A Fleet request's header round trip: the SuperNode signs a timestamp, the SuperLink verifies it.
    claimed = bytes_to_public_key(public_key_to_bytes(key.public_key()))
    stamp = b"2026-12-02T16:00:00.000000+00:00"
    assert verify_signature(claimed, stamp, sign_message(key, stamp))
    assert not verify_signature(claimed, stamp + b"0", sign_message(key, stamp))
    assert (tmp_path / "supernode-key").stat().st_mode & 0o077 == 0


def test_an_existing_key_is_kept_whatever_its_curve(tmp_path: Path) -> None:
    """Agents enrolled with the P-384 keys of earlier versions keep their identity."""
    old = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "supernode-key").write_bytes(old.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.OpenSSH,
                                                               serialization.NoEncryption()))
    line = old.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "supernode-key.pub").write_bytes(line)
    private_path, public_line = supernode_keypair(tmp_path)
    assert public_line == line.decode()
    kept = serialization.load_ssh_private_key(private_path.read_bytes(), None)
    assert isinstance(kept, ec.EllipticCurvePrivateKey) and isinstance(kept.curve, ec.SECP384R1)
    assert kept.sign(b"x", ec.ECDSA(hashes.SHA256()))
