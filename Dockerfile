# One image for the driftloop worker and for the MLflow tracking server (docker-compose.yml runs
# `mlflow server` from it), so the server and its clients always run the same MLflow version.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# README.md is part of the package metadata (pyproject's readme), so the build needs it.
COPY pyproject.toml constraints.txt README.md /app/
# A directory source copies its contents, not the directory, hence one COPY per package.
COPY driftloop/ /app/driftloop/
COPY streams/ /app/streams/
COPY features/ /app/features/
COPY models/ /app/models/
COPY retrain/ /app/retrain/
COPY load/ /app/load/
COPY feature_repo/ /app/feature_repo/

# The constraints file pins every package (including psycopg for the Postgres backend and redis for
# the Feast online store), so every build matches the tested set.
RUN pip install --no-cache-dir -c constraints.txt /app

# Run unprivileged. The worker writes its state to /data and regenerates the Feast repo
# (feature_repo is the default DRIFTLOOP_FEAST_REPO relative to /app); MLflow writes artifacts
# to /mlartifacts. Named volumes mounted there inherit this ownership on first use.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin driftloop \
    && mkdir -p /data /mlartifacts \
    && chown -R driftloop:driftloop /data /mlartifacts /app/feature_repo
USER driftloop

# The worker's Prometheus /metrics endpoint (DRIFTLOOP_METRICS_PORT).
EXPOSE 9100

# CMD rather than ENTRYPOINT, so a compose `command:` (e.g. `mlflow server ...`) replaces it whole.
CMD ["driftloop", "worker"]
