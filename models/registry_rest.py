"""The registry's reads over an MLflow server's REST API, for the scoring worker, which never imports MLflow.

A worker only reads the registry: which version an alias names, a version's tags, its files. MLflow's
Python client would take ~50 MB of the worker's memory (its imports: docs/benchmarks.md), so over an
`http(s)://` tracking URI models/registry.py asks the server itself:

    GET /api/2.0/mlflow/registered-models/get?name=N                      its aliases
    GET /api/2.0/mlflow/model-versions/get?name=N&version=V               a version's tags, run, creation time
    GET /api/2.0/mlflow/model-versions/get-download-uri?name=N&version=V  where its files are
    GET /api/2.0/mlflow/model-versions/search?filter=name='N'             every version (a fallback's choice)
    GET /api/2.0/mlflow-artifacts/artifacts?path=P                        a directory of them
    GET /api/2.0/mlflow-artifacts/artifacts/P                             one of them

The files come this way when the server proxies them (`mlflow server --serve-artifacts`, as `driftloop up`
and docker-compose.yml run it), which gives `mlflow-artifacts:/...` URIs; for any other artifact store
`download` returns None and the caller uses MLflow's client. Nothing downloaded is trusted here: the
caller checks the files' checksum and signature before anything reads them. A listed path that would
leave the download directory is refused before it is fetched.

Credentials: `MLFLOW_TRACKING_TOKEN` (a bearer token) or `MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD` (basic authentication), as MLflow's own client reads them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

from driftloop.errors import DriftloopError

TIMEOUT_S = 30.0
ALIASES_TIMEOUT_S = 5.0  # polled by status commands and the control plane, which must not wait behind it
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass(frozen=True)
class RegisteredVersion:
    """What the registry says of one model version (MLflow's client or its REST API alike)."""

    version: int
    run_id: str
    creation_timestamp: int
    tags: dict[str, str] = field(default_factory=dict)


class RegistryAnswered(DriftloopError):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_server(tracking_uri: str | None) -> TypeGuard[str]:
    return tracking_uri is not None and tracking_uri.startswith(("http://", "https://"))


def aliases(tracking_uri: str, name: str) -> dict[str, int]:
    """Every alias of the registered model and its version ({} when it is not registered).

    MLflow's Python client spends 8-20 s on its first registry call on these machines (imports and plugin
    discovery), which would stall a status command or the control plane's first tick.
    """
    try:
        found = _get_json(tracking_uri, "/api/2.0/mlflow/registered-models/get", {"name": name}, ALIASES_TIMEOUT_S)
    except RegistryAnswered as exc:
        if exc.status == 404:
            return {}
        raise
    return {entry["alias"]: int(entry["version"]) for entry in found["registered_model"].get("aliases", ())}


def model_version(tracking_uri: str, name: str, version: int) -> RegisteredVersion:
    found = _get_json(tracking_uri, "/api/2.0/mlflow/model-versions/get", {"name": name, "version": str(version)})
    mv = found["model_version"]
    return RegisteredVersion(
        int(mv["version"]),
        mv.get("run_id") or "",
        int(mv.get("creation_timestamp") or 0),
        {tag["key"]: tag["value"] for tag in mv.get("tags", ())},
    )


def version_numbers(tracking_uri: str, name: str) -> list[int]:
    """Every version of the registered model, in no particular order ([] when it is not registered)."""
    quoted = name.replace("'", "\\'")
    found: list[int] = []
    page: dict[str, str] = {}
    while True:
        answer = _get_json(
            tracking_uri,
            "/api/2.0/mlflow/model-versions/search",
            {"filter": f"name = '{quoted}'", "max_results": "1000", **page},
        )
        found += [int(mv["version"]) for mv in answer.get("model_versions", ())]
        if not answer.get("next_page_token"):
            return found
        page = {"page_token": answer["next_page_token"]}


def download_uri(tracking_uri: str, name: str, version: int) -> str:
    found = _get_json(
        tracking_uri, "/api/2.0/mlflow/model-versions/get-download-uri", {"name": name, "version": str(version)}
    )
    return found["artifact_uri"]


def download(tracking_uri: str, artifact_uri: str, destination: Path) -> Path | None:
    """The directory `artifact_uri` names, copied under `destination`; None unless the server proxies it."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme != "mlflow-artifacts" or parsed.netloc:  # another store, or another server's
        return None
    root = PurePosixPath(parsed.path.strip("/"))
    local = destination / root.name
    _download_directory(tracking_uri, root, local)
    return local


def _download_directory(tracking_uri: str, remote: PurePosixPath, local: Path) -> None:
    local.mkdir(parents=True, exist_ok=True)
    for entry in _get_json(tracking_uri, _ARTIFACTS, {"path": str(remote)}).get("files", ()):
        name = entry["path"]  # the server lists each entry by its base name
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise DriftloopError(f"the registry listed an artifact named {entry['path']!r} under {remote}")
        if entry.get("is_dir"):
            _download_directory(tracking_uri, remote / name, local / name)
            continue
        url = _url(tracking_uri, f"{_ARTIFACTS}/{urllib.parse.quote(str(remote / name))}")
        with _open(url) as response, (local / name).open("wb") as out:
            shutil.copyfileobj(response, out)


def _get_json(tracking_uri: str, endpoint: str, query: dict[str, str], timeout: float = TIMEOUT_S) -> dict[str, Any]:
    with _open(_url(tracking_uri, endpoint, query), timeout) as response:
        return json.loads(response.read())


def _url(tracking_uri: str, endpoint: str, query: dict[str, str] | None = None) -> str:
    return f"{tracking_uri.rstrip('/')}{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _open(url: str, timeout: float = TIMEOUT_S):
    request = urllib.request.Request(url, headers=_credentials())
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode(errors="replace")
        raise RegistryAnswered(exc.code, f"MLflow answered {exc.code} to GET {url}: {detail}") from None


def _credentials() -> dict[str, str]:
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}
