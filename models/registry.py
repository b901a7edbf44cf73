"""MLflow model registry access: register a model version (signed), load one by alias (verified), move aliases.

A registered version is one MLflow run (experiment = spec.name) holding params, metrics and a pyfunc model
whose artifacts are

    artifacts/model/            the file Model.save wrote (the flavor's `filename`: model.pkl, model.onnx, ...)
    artifacts/reference.parquet the reference sample of input rows, for data-drift detection

and the model version (under spec.model.name) carries the tags `driftloop.checksum` (the SHA-256 of the
model directory, driftloop.models.checksum), `driftloop.flavor` and `driftloop.signature` (the signing key's
HMAC of both artifacts and the flavor and placeholder tags, driftloop.models.provenance). `load_version`,
`load_alias` and `load_reference` download the artifacts and raise `ModelRefused` when a tag is missing, the
checksum or the signature does not match, before any file is unpickled, parsed or given to onnxruntime.

Every function takes `tracking_uri` (also used as the registry URI); those that sign or verify take `key`
(default: the key the process's settings name). MLflow's model logging and the SQLAlchemy registry store
read the process-global tracking URI, so calls here set it for their duration under a process-wide lock and
restore it afterwards. Against an MLflow server (`http(s)://`), the reads a scoring worker makes (aliases,
a version's tags, its files when the server proxies them) go to the server's REST API
(models/registry_rest.py): MLflow's client is imported only by the calls that need it, so a worker never is.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from driftloop.errors import DriftloopError
from driftloop.mlflow_server import http_ok
from driftloop.models import provenance, registry_rest
from driftloop.models.checksum import CHECKSUM_TAG, directory_checksum
from driftloop.models.flavors import Model, flavor_of, load
from driftloop.models.inputs import rows_to_frame
from driftloop.models.provenance import FLAVOR_TAG, PLACEHOLDER_TAG, SIGNATURE_TAG, ModelRefused
from driftloop.models.registry_rest import RegisteredVersion, is_server
from driftloop.schema import model_inputs
from driftloop.signing import SigningKey, configured_key
from driftloop.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

MODEL_ARTIFACT = "model"  # artifacts/model/ inside the logged MLflow model
REFERENCE_FILE = "reference.parquet"
SIGNED_FILES = (MODEL_ARTIFACT, REFERENCE_FILE)

# Downloads happen in long-running workers whose logs are files: no terminal progress bars in them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Nor a run's link on stdout (MLflow prints one per run against a server): stdout can be a report (bench).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
_GLOBALS = threading.RLock()
_URI_ENV = "MLFLOW_TRACKING_URI"
_LOG = logging.getLogger("driftloop.models.registry")
T = TypeVar("T")


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: int
    run_id: str
    checksum: str


@dataclass(frozen=True)
class LoadedModel:
    version: int
    model: Model
    reference: pd.DataFrame | None  # None when loaded without it (a scoring worker has no use for it)
    checksum: str
    created_ms: int  # when the version was registered: online learning since then is replayed on load
    placeholder: bool  # the warm-up placeholder of an ONNX pipeline (signed, so a tag alone cannot make one)


@dataclass(frozen=True)
class VerifiedReference:
    version: int
    reference: pd.DataFrame
    placeholder: bool


@contextmanager
def _mlflow(tracking_uri: str) -> Iterator[MlflowClient]:
    """A client for tracking_uri, with MLflow's global tracking URI pointing there until the block ends.

    Restores the previous global and the MLFLOW_TRACKING_URI environment variable (which
    mlflow.set_tracking_uri rewrites, and unsets when the previous global was unset).
    """
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _GLOBALS:
        saved_env = os.environ.get(_URI_ENV)
        saved_uri = getattr(tracking_utils, "_tracking_uri", None)
        mlflow.set_tracking_uri(tracking_uri)
        try:
            yield MlflowClient(tracking_uri, registry_uri=tracking_uri)
        finally:
            mlflow.set_tracking_uri(saved_uri)  # type: ignore[arg-type]  # None is MLflow's "unset", unannotated
            if saved_env is None:
                os.environ.pop(_URI_ENV, None)
            else:
                os.environ[_URI_ENV] = saved_env


def _code(exc: MlflowException) -> str:
    return exc.error_code


def _mlflow_exception() -> type[MlflowException]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def ensure_experiment(name: str, *, tracking_uri: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (with artifact_location, if given) when missing."""
    with _mlflow(tracking_uri) as client:
        return _ensure_experiment(client, name, artifact_location)


def _ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except _mlflow_exception() as exc:  # created concurrently
        existing = client.get_experiment_by_name(name)
        if _code(exc) != "RESOURCE_ALREADY_EXISTS" or existing is None:
            raise
        return existing.experiment_id


def _local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts next to a SQLite registry file (MLflow would otherwise use ./mlruns of the current
    directory); servers and other databases keep their own artifact root."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _requirements(flavor: str) -> list[str]:
    packages = ["driftloop", "mlflow", "numpy", "pandas", "pyarrow", *flavor_of(flavor).requirements]
    out = []
    for package in packages:
        try:
            out.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(package)
    return out


def register(
    model: Model,
    spec: PipelineSpec,
    *,
    tracking_uri: str,
    reference_rows: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    artifacts: Sequence[str | Path] = (),
    key: SigningKey | None = None,
) -> ModelVersionInfo:
    """Log `model` in a new MLflow run and register it as a new version of spec.model.name.

    `params`/`metrics` go to the run (with the flavor, estimator and spec model params); `tags` go to both
    the run and the model version; the version also gets `driftloop.checksum`, `driftloop.flavor` and
    `driftloop.signature` (by `key`). `artifacts` are local files (reports, say) logged at the root of the
    run's artifacts.
    """
    import mlflow

    from driftloop.models.pyfunc import DriftloopPyfunc, signature_for

    key = key or configured_key()
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    run_params = {
        "flavor": model.flavor,
        "estimator": spec.model.estimator,
        **{f"model.{k}": v for k, v in spec.model.params.items()},
        **(params or {}),
    }
    reference = rows_to_frame(model_inputs(spec), list(reference_rows))
    with tempfile.TemporaryDirectory(prefix="driftloop-register-") as tmp:
        model_dir = Path(tmp) / MODEL_ARTIFACT
        model.save(model_dir)
        checksum = directory_checksum(model_dir)
        reference_path = Path(tmp) / REFERENCE_FILE
        reference.to_parquet(reference_path, index=False)
        version_tags = {**tags, CHECKSUM_TAG: checksum, FLAVOR_TAG: model.flavor}
        version_tags[SIGNATURE_TAG] = provenance.sign(key, spec.model.name, version_tags, Path(tmp), SIGNED_FILES)
        with _mlflow(tracking_uri) as client:
            experiment_id = _ensure_experiment(client, spec.name, _local_artifact_root(tracking_uri))
            with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
                run_id = run.info.run_id
                mlflow.log_params(run_params)
                if metrics:
                    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                for path in artifacts:
                    mlflow.log_artifact(str(path))
                logged = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=DriftloopPyfunc(),
                    artifacts={"model": str(model_dir), "reference": str(reference_path)},
                    signature=signature_for(spec),
                    pip_requirements=_requirements(model.flavor),
                    input_example=reference.head(5) if len(reference) else None,
                    metadata={CHECKSUM_TAG: checksum, FLAVOR_TAG: model.flavor},
                )
                try:
                    client.create_registered_model(spec.model.name)
                except _mlflow_exception() as exc:
                    if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                        raise
                version = client.create_model_version(
                    spec.model.name, source=logged.model_uri, run_id=run_id, model_id=logged.model_id, tags=version_tags
                )
    return ModelVersionInfo(spec.model.name, int(version.version), run_id, checksum)


def version_info(name: str, version: int, *, tracking_uri: str) -> ModelVersionInfo:
    mv = _registered_version(name, version, tracking_uri)
    return ModelVersionInfo(name, mv.version, mv.run_id, mv.tags.get(CHECKSUM_TAG, ""))


def _registered_version(name: str, version: int, tracking_uri: str) -> RegisteredVersion:
    if is_server(tracking_uri):
        return registry_rest.model_version(tracking_uri, name, version)
    with _mlflow(tracking_uri) as client:
        mv = client.get_model_version(name, str(version))
    return RegisteredVersion(int(mv.version), mv.run_id or "", int(mv.creation_timestamp or 0), dict(mv.tags or {}))


def get_alias_version(name: str, alias: str, *, tracking_uri: str) -> int | None:
    """The version `alias` points at; None when the alias or the registered model does not exist."""
    return aliases(name, tracking_uri=tracking_uri).get(alias)


def aliases(name: str, *, tracking_uri: str) -> dict[str, int]:
    """Every alias of the registered model and its version ({} when the model is not registered)."""
    if is_server(tracking_uri):  # polled every second or two: the fast path
        return registry_rest.aliases(tracking_uri, name)
    with _mlflow(tracking_uri) as client:
        try:
            registered = client.get_registered_model(name)
        except _mlflow_exception() as exc:
            if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
    return {alias: int(version) for alias, version in (registered.aliases or {}).items()}


def set_version_tag(name: str, version: int, key: str, value: str, *, tracking_uri: str) -> None:
    with _mlflow(tracking_uri) as client:
        client.set_model_version_tag(name, str(version), key, value)


def version_tags(name: str, version: int, *, tracking_uri: str) -> dict[str, str]:
    with _mlflow(tracking_uri) as client:
        return dict(client.get_model_version(name, str(version)).tags or {})


def versions_tagged(name: str, key: str, value: str, *, tracking_uri: str) -> list[int]:
    """The versions of the registered model whose tag `key` equals `value`, oldest first."""
    quoted = value.replace("'", "\\'")
    with _mlflow(tracking_uri) as client:
        found = client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{quoted}'")
    return sorted(int(mv.version) for mv in found)


def set_alias(name: str, alias: str, version: int, *, tracking_uri: str) -> None:
    with _mlflow(tracking_uri) as client:
        client.set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str, *, tracking_uri: str) -> None:
    """Remove the alias; nothing happens when it does not exist."""
    if get_alias_version(name, alias, tracking_uri=tracking_uri) is None:
        return
    with _mlflow(tracking_uri) as client:
        client.delete_registered_model_alias(name, alias)


def versions(name: str, *, tracking_uri: str) -> list[int]:
    """Every version of the registered model, newest first ([] when it is not registered)."""
    if is_server(tracking_uri):
        return sorted(registry_rest.version_numbers(tracking_uri, name), reverse=True)
    quoted = name.replace("'", "\\'")
    with _mlflow(tracking_uri) as client:
        found = client.search_model_versions(f"name = '{quoted}'")
    return sorted((int(mv.version) for mv in found), reverse=True)


def load_alias(name: str, alias: str, *, tracking_uri: str, key: SigningKey | None = None) -> LoadedModel | None:
    """The version `alias` points at, loaded and verified; None when the alias does not exist."""
    version = get_alias_version(name, alias, tracking_uri=tracking_uri)
    return None if version is None else load_version(name, version, tracking_uri=tracking_uri, key=key)


def load_version(
    name: str, version: int, *, tracking_uri: str, key: SigningKey | None = None, reference: bool = True
) -> LoadedModel:
    """Download a version's model files and reference sample, verify them, load the model; and read the
    reference sample unless `reference` is False (it is verified all the same; reading it imports pandas)."""
    with _verified(name, version, tracking_uri, key) as (mv, local, checksum):
        model = load(local / MODEL_ARTIFACT, mv.tags[FLAVOR_TAG])
        sample = _read_reference(local) if reference else None
    return LoadedModel(mv.version, model, sample, checksum, mv.creation_timestamp, PLACEHOLDER_TAG in mv.tags)


def load_reference(name: str, version: int, *, tracking_uri: str, key: SigningKey | None = None) -> VerifiedReference:
    """A version's reference sample, verified (with the whole version) and read; the model is not loaded."""
    with _verified(name, version, tracking_uri, key) as (mv, local, _checksum):
        return VerifiedReference(mv.version, _read_reference(local), PLACEHOLDER_TAG in mv.tags)


def _read_reference(artifacts: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(artifacts / REFERENCE_FILE)


def verify_version(name: str, version: int, *, tracking_uri: str, key: SigningKey | None = None) -> None:
    """Raise ModelRefused unless the version's artifacts are what driftloop signed; nothing is loaded."""
    with _verified(name, version, tracking_uri, key):
        pass


def sign_version(name: str, version: int, *, tracking_uri: str, key: SigningKey | None = None) -> None:
    """Sign a version registered unsigned (before driftloop signed versions) that an operator vouches for;
    its files must still match its `driftloop.checksum`. Every process accepts it from then on."""
    key = key or configured_key()
    with _verified(name, version, tracking_uri, key, signed=False) as (mv, local, _checksum):
        signature = provenance.sign(key, name, mv.tags, local, SIGNED_FILES)
    set_version_tag(name, version, SIGNATURE_TAG, signature, tracking_uri=tracking_uri)


@contextmanager
def _verified(
    name: str, version: int, tracking_uri: str, key: SigningKey | None, signed: bool = True
) -> Iterator[tuple[RegisteredVersion, Path, str]]:
    """(model version, local artifacts directory, model checksum), downloaded and verified (`signed`
    False: all but the signature); the files last until the block ends."""
    key = key or configured_key()
    mv = _registered_version(name, version, tracking_uri)
    tags = mv.tags
    expected = tags.get(CHECKSUM_TAG)
    if not expected:
        raise ModelRefused(name, version, f"no {CHECKSUM_TAG} tag: an unverifiable model")
    if (signed and not tags.get(SIGNATURE_TAG)) or not tags.get(FLAVOR_TAG):
        raise ModelRefused(
            name,
            version,
            f"unsigned: no {SIGNATURE_TAG} (or {FLAVOR_TAG}) tag, so nothing proves driftloop registered it",
        )
    with tempfile.TemporaryDirectory(prefix="driftloop-load-") as tmp:
        local = _download(name, version, tracking_uri, Path(tmp))
        actual = directory_checksum(local / MODEL_ARTIFACT)
        if actual != expected:
            raise ModelRefused(
                name,
                version,
                f"checksum mismatch: the registry tag {CHECKSUM_TAG} is {expected} "
                f"but the downloaded model files hash to {actual}",
            )
        if signed:
            provenance.verify(key, name, version, tags, local, SIGNED_FILES)
        yield mv, local, actual


def _download(name: str, version: int, tracking_uri: str, destination: Path) -> Path:
    """A version's artifacts directory (the model and the reference sample), copied under `destination`."""
    if is_server(tracking_uri):
        source = registry_rest.download_uri(tracking_uri, name, version).rstrip("/")
        local = registry_rest.download(tracking_uri, f"{source}/artifacts", destination)
        if local is not None:
            return local
    import mlflow

    with _mlflow(tracking_uri) as client:
        source = client.get_model_version_download_uri(name, str(version)).rstrip("/")
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/artifacts", dst_path=str(destination), tracking_uri=tracking_uri
        )
    return Path(downloaded)


def mlflow_problem(tracking_uri: str) -> str | None:
    """None when MLflow at tracking_uri answers; else what went wrong, in a few words."""
    if is_server(tracking_uri):
        return None if http_ok(f"{tracking_uri.rstrip('/')}/health", timeout=3) else "no answer on /health"
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # any failure to reach the store counts: the driver's errors vary
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def when_reachable(
    call: Callable[[], T], *, tracking_uri: str, what: str, stop: threading.Event, timeout: float = 120.0
) -> T:
    """`call()`, tried again while MLflow at tracking_uri does not answer (it is restarting, say).

    Waits 0.5 s, doubling up to 5 s, between tries and logs each wait; after `timeout` seconds, or once
    `stop` is set, raises DriftloopError. A failure while MLflow answers is the call's own: raised at once.
    The default timeout ends a worker's wait before `driftloop up` would stop it for not being ready (180 s),
    so the worker's log says why it gave up.
    """

    def log_wait(state: tenacity.RetryCallState) -> None:
        outcome, action = state.outcome, state.next_action
        assert outcome is not None and action is not None  # tenacity sets both before it sleeps
        error = outcome.exception()
        _LOG.warning(
            "%s: MLflow at %s does not answer (%s); trying again in %.1fs (for up to %.0fs)",
            what,
            tracking_uri,
            str(error).splitlines()[0] if str(error) else type(error).__name__,
            action.sleep,
            timeout,
        )

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # ends early once `stop` is set

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda _: mlflow_problem(tracking_uri) is not None),
        wait=tenacity.wait_exponential(multiplier=0.5, max=5.0),
        sleep=sleep,
        stop=tenacity.stop_after_delay(timeout) | tenacity.stop_when_event_set(stop),
        before_sleep=log_wait,
    )
    try:
        return retrying(call)
    except tenacity.RetryError as gave_up:
        error = gave_up.last_attempt.exception()
        raise DriftloopError(
            f"{what}: MLflow at {tracking_uri} did not answer "
            f"{'before the stop' if stop.is_set() else f'for {timeout:.0f}s'}: {error}"
        ) from error
