"""SHA-256 checksum of a saved model directory, stored as the model version tag `driftloop.checksum`.

The checksum is the SHA-256 of a `sha256sum`-style manifest ("<sha256>  <relative path>\\n" for every file,
sorted by path), so a changed, added or removed file all change it. By hand, for a flat directory:
`cd artifacts/model && sha256sum $(ls | sort) | sha256sum`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHECKSUM_TAG = "driftloop.checksum"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_checksum(directory: str | Path) -> str:
    directory = Path(directory)
    files = sorted((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.relative_to(directory).as_posix())
    manifest = "".join(f"{file_sha256(p)}  {p.relative_to(directory).as_posix()}\n" for p in files)
    return hashlib.sha256(manifest.encode()).hexdigest()
