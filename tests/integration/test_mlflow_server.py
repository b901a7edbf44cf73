"""The MLflow server driftloop starts: SQLite by default, Postgres when configured."""

import mlflow

from driftloop.mlflow_server import MlflowServer, backend_store_uri


def test_postgres_backend_records_runs(tmp_path, postgres_url):
    server = MlflowServer(backend_store_uri(postgres_url, tmp_path), tmp_path, 0)
    server.start()
    try:
        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment = client.create_experiment("postgres-check")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "auc", 0.91)
        assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.91}
    finally:
        server.stop()


def test_default_backend_is_sqlite_in_the_data_dir(tmp_path):
    assert backend_store_uri(None, tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
