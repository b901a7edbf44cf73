"""A scoring worker keeps its memory for its state: it imports none of the libraries only training, drift
detection or the registry's writes need (each is tens of MB of resident memory for the worker's life)."""

import json
import subprocess
import sys

import pytest

HEAVY = ("mlflow", "pandas", "pyarrow", "river", "scipy", "sklearn", "feast", "sqlalchemy")

_IMPORTS = """
import json, sys
import driftloop.cli, driftloop.streams.worker.app, driftloop.models.onnx_flavor
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_a_worker_serving_an_onnx_model_imports_none_of_the_heavy_libraries():
    found = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, timeout=120, check=True)
    imported = set(json.loads(found.stdout))
    assert not imported & set(HEAVY), f"the worker imports {sorted(imported & set(HEAVY))}"


def test_a_river_model_loads_in_a_worker_that_had_not_imported_river(tmp_path):
    # River pipelines still serve: unpickling the model imports what it needs.
    save = """
import pathlib, sys
from driftloop.models.flavors import new_model
from tests.support.models import DEMO
new_model(DEMO).save(pathlib.Path(sys.argv[1]))
"""
    subprocess.run([sys.executable, "-c", save, str(tmp_path / "model")], check=True, timeout=120)
    serve = f"""
import json, pathlib, sys
{_IMPORTS.strip().splitlines()[1]}
from driftloop.models.flavors import load
from tests.support.models import ROWS
before = "river" in sys.modules
model = load(pathlib.Path(sys.argv[1]), "river")
print(json.dumps([before, "river" in sys.modules, [float(p) for p in model.predict_proba(ROWS[:2])]]))
"""
    found = subprocess.run(
        [sys.executable, "-c", serve, str(tmp_path / "model")], capture_output=True, text=True, timeout=120, check=True
    )
    before, after, scores = json.loads(found.stdout)
    assert (before, after) == (False, True) and scores == pytest.approx([0.5, 0.5])
