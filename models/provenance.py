"""A model version's signature: proof, by the signing key (driftloop/signing.py), that driftloop registered it.

The registry is not trusted (anyone who reaches MLflow can register a version, tag it and move aliases), so
`registry.register` signs, and the version tag `driftloop.signature` holds the HMAC of

    {"model": <registered model name>, "flavor": <tag driftloop.flavor>, "placeholder": <tag driftloop.placeholder>,
     "files": {"model/<path>": <sha256>, ..., "reference.parquet": <sha256>}}

(JSON, sorted keys): every file driftloop later reads (the pickle or ONNX file is deserialised, the parquet
sample is parsed) and the tags that decide how it is read or treated. `verify` runs on the downloaded files
before any of them is opened, and raises `ModelRefused` on any difference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from driftloop.errors import DriftloopError
from driftloop.models.checksum import file_sha256
from driftloop.signing import SigningKey

SIGNATURE_TAG = "driftloop.signature"
FLAVOR_TAG = "driftloop.flavor"
PLACEHOLDER_TAG = "driftloop.placeholder"
_DOMAIN = "driftloop-model-v1"


class ModelRefused(DriftloopError):
    """A version whose origin is not proven; `reason` says why. `news` is False when the refusal repeats one
    already reported (models/trusted.py remembers them)."""

    def __init__(self, name: str, version: int, reason: str, news: bool = True):
        super().__init__(f"model {name} v{version}: {reason}; refusing to load it")
        self.name, self.version, self.reason, self.news = name, version, reason, news


def _message(name: str, tags: Mapping[str, str], root: Path, signed_files: tuple[str, ...]) -> bytes:
    files: dict[str, str] = {}
    for top in signed_files:
        path = root / top
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        files.update({p.relative_to(root).as_posix(): file_sha256(p) for p in found})
    document = {"model": name, "flavor": tags.get(FLAVOR_TAG), "placeholder": tags.get(PLACEHOLDER_TAG), "files": files}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign(key: SigningKey, name: str, tags: Mapping[str, str], root: Path, signed_files: tuple[str, ...]) -> str:
    """The signature of the files `signed_files` (directories or files under `root`) with these tags."""
    return key.sign(_DOMAIN, _message(name, tags, root, signed_files))


def verify(
    key: SigningKey, name: str, version: int, tags: Mapping[str, str], root: Path, signed_files: tuple[str, ...]
) -> None:
    if not key.verify(_DOMAIN, _message(name, tags, root, signed_files), tags.get(SIGNATURE_TAG)):
        raise ModelRefused(
            name,
            version,
            f"bad signature: its files or its {FLAVOR_TAG}/{PLACEHOLDER_TAG} tags are "
            f"not what driftloop signed (or another key signed them)",
        )
