"""The one secret that proves a model or a control record came from driftloop: HMAC-SHA256 with a key file.

Model versions (models/provenance.py) and control records (streams/contracts.py) are signed with the key
in the file `signing_key_file` (default `<data dir>/signing.key`: 32 random bytes, hex, mode 0600), which
neither the MLflow registry nor Kafka ever see. Every driftloop process both signs and verifies (the worker
registers the first champion, the control plane sends retrain requests, the retrain worker registers
models and audits), so a shared secret gives nothing away that a key pair would have kept; HMAC is in the
standard library. Each use signs under its own domain string, so a signature made for one kind of thing
never verifies as another.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from driftloop.errors import DriftloopError

KEY_FILE = "signing.key"
KEY_BYTES = 32
_LOG = logging.getLogger("driftloop.signing")


@dataclass(frozen=True)
class SigningKey:
    path: Path
    secret: bytes = field(repr=False)

    def sign(self, domain: str, message: bytes) -> str:
        return hmac.new(self.secret, domain.encode() + b"\0" + message, hashlib.sha256).hexdigest()

    def verify(self, domain: str, message: bytes, signature: str | bytes | None) -> bool:
        if isinstance(signature, bytes):
            signature = signature.decode("ascii", errors="replace")
        return signature is not None and hmac.compare_digest(self.sign(domain, message), signature)


def key_path(settings) -> Path:
    """Where the settings say the key is: `signing_key_file`, else `signing.key` in the data dir."""
    return Path(settings.signing_key_file or Path(settings.data_dir) / KEY_FILE)


def load_key(path: str | Path) -> SigningKey:
    path = Path(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise DriftloopError(
            f"no signing key at {path}: `driftloop up` or `driftloop keygen` creates one; every "
            f"driftloop process of a stack must read the same file (DRIFTLOOP_SIGNING_KEY_FILE)"
        ) from None
    except OSError as exc:
        raise DriftloopError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise DriftloopError(f"signing key {path}: not hex text") from None
    if len(secret) < KEY_BYTES:
        raise DriftloopError(f"signing key {path}: {len(secret)} bytes; at least {KEY_BYTES} are needed")
    if path.stat().st_mode & 0o077:
        _LOG.warning("signing key %s is readable by other users than its owner: chmod 600 it", path)
    return SigningKey(path, secret)


def create_key(path: str | Path) -> bool:
    """Write a new random key to `path` (mode 0600) unless a key is there; True when one was created.

    The key appears whole or not at all (written aside, then hard-linked into place), so processes
    starting together never read half a key, and two creators cannot both win.
    """
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(KEY_BYTES) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)


@lru_cache(maxsize=4)
def _cached(path: Path) -> SigningKey:
    return load_key(path)


def configured_key() -> SigningKey:
    """The key the process's settings (config file, environment) name; for callers given no key."""
    from driftloop import settings

    return _cached(key_path(settings.load()))
