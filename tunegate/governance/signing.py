"""Ed25519 signatures on approvals (the ``cryptography`` package).

A reviewer keeps a private key (``tunegate keygen``); its public key goes into the params under
``gate.approvals.public_keys``. An approval entry then carries a signature over the sha256 of its
content (everything in the entry's data but the signature), so neither a database administrator
who rewrites the audit table and its registry head nor anyone else can forge an approval: they
lack the key. Public keys are written ``ed25519:<base64 of the 32 raw bytes>``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from tunegate.governance.audit import canonical

PREFIX = "ed25519:"


class SigningError(ValueError):
    """A key that cannot be read or does not match."""


def content_digest(data: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical({k: v for k, v in data.items() if k != "signature"}).encode()).digest()


def generate(path: Path) -> str:
    """Write a new private key (PEM, mode 0600; refuses to overwrite) and return its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        raise SigningError(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return public_key_of(key)


def load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningError(f"cannot read the signing key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an ed25519 private key")
    return key


def public_key_of(key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def parse_public(text: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not text.startswith(PREFIX):
        raise SigningError(f"public key {text[:20]!r}...: expected 'ed25519:<base64>'")
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text[len(PREFIX):], validate=True))
    except ValueError as error:
        raise SigningError(f"public key {text[:20]!r}...: {error}") from None


def sign(key, data: dict[str, Any]) -> dict[str, str]:
    """The ``signature`` field for an entry's data."""
    return {"alg": "ed25519", "public_key": public_key_of(key), "value": base64.b64encode(key.sign(content_digest(data))).decode()}


def check(data: dict[str, Any], public_key: str) -> str | None:
    """None when ``data['signature']`` is a valid signature by ``public_key``, else why not."""
    from cryptography.exceptions import InvalidSignature

    signature = data.get("signature")
    if not isinstance(signature, dict) or not signature.get("value"):
        return "no signature"
    if signature.get("public_key") != public_key:
        return "signed with a key that is not the reviewer's listed public key"
    try:
        parse_public(public_key).verify(base64.b64decode(signature["value"]), content_digest(data))
    except (InvalidSignature, ValueError):
        return "the signature does not verify"
    return None
