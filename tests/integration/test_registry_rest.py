"""A scoring worker reads the registry over the MLflow server's REST API, without importing MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftloop.errors import DriftloopError
from driftloop.mlflow_server import MlflowServer, backend_store_uri
from driftloop.models import registry, registry_rest
from driftloop.models.bootstrap import CHAMPION, ensure_champion_apart
from tests.support.models import DEMO, TRAIN

# Run in a fresh interpreter: what a worker does with the registry, and whether MLflow got imported.
_WORKER_READS = """
import json, sys
from driftloop.models import registry
from driftloop.models.bootstrap import CHAMPION, ensure_champion_apart
from tests.support.models import DEMO, TRAIN
uri = sys.argv[1]
info = ensure_champion_apart(DEMO, uri)
loaded = registry.load_alias(DEMO.model.name, CHAMPION, tracking_uri=uri)
print(json.dumps({
    "version": loaded.version, "registered": info.version, "checksum": loaded.checksum == info.checksum,
    "scores": [float(p) for p in loaded.model.predict_proba(TRAIN[:3])],
    "versions": registry.versions(DEMO.model.name, tracking_uri=uri),  # a refused champion's fallbacks
    "mlflow_imported": any(name == "mlflow" or name.startswith("mlflow.") for name in sys.modules),
}))
"""


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(backend_store_uri(None, tmp_path), tmp_path, 0)
    server.start()
    yield server.url
    server.stop()


def test_a_worker_registers_and_loads_its_champion_without_importing_mlflow(mlflow_server):
    read = subprocess.run(
        [sys.executable, "-c", _WORKER_READS, mlflow_server], capture_output=True, text=True, timeout=300, check=True
    )
    seen = json.loads(read.stdout.splitlines()[-1])
    assert seen["version"] == seen["registered"] == 1 and seen["checksum"] and seen["versions"] == [1]
    assert seen["scores"] == pytest.approx([0.5, 0.5, 0.5])  # the cold-start River model
    assert not seen["mlflow_imported"]
    # MLflow's own client (the path of non-HTTP registries) loads the same version, the same files
    through_mlflow = registry.load_version(DEMO.model.name, 1, tracking_uri=mlflow_server)
    assert through_mlflow.checksum == registry.version_info(DEMO.model.name, 1, tracking_uri=mlflow_server).checksum
    assert ensure_champion_apart(DEMO, mlflow_server).version == 1  # found, not registered again
    assert registry.versions(DEMO.model.name, tracking_uri=mlflow_server) == [1]
    assert list(through_mlflow.model.predict_proba(TRAIN[:3])) == pytest.approx(seen["scores"])


class _HostileRegistry(BaseHTTPRequestHandler):
    """Lists an artifact whose name climbs out of the download directory."""

    def do_GET(self):
        body = json.dumps({"files": [{"path": "../../escaped", "is_dir": False, "file_size": 3}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_an_artifact_listing_that_leaves_the_download_directory_is_refused(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(DriftloopError, match="escaped"):
            registry_rest.download(uri, "mlflow-artifacts:/1/models/m-1/artifacts", tmp_path / "download")
    finally:
        server.shutdown()
    assert not (tmp_path / "escaped").exists()
    assert not [path for path in (tmp_path / "download").rglob("*") if path.is_file()]


def test_artifacts_of_another_store_are_left_to_mlflow(tmp_path):
    assert registry_rest.download("http://127.0.0.1:1", "s3://bucket/1/artifacts", tmp_path) is None
    assert registry_rest.download("http://127.0.0.1:1", "mlflow-artifacts://elsewhere:5000/1/x", tmp_path) is None


def test_the_champion_alias_is_read_as_it_moves(mlflow_server):
    ensure_champion_apart(DEMO, mlflow_server)
    assert registry.get_alias_version(DEMO.model.name, CHAMPION, tracking_uri=mlflow_server) == 1
    assert registry.load_alias(DEMO.model.name, "challenger", tracking_uri=mlflow_server) is None
