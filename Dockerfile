# The orchestrator image: worker, beat and Flower (`celery -A worker worker|beat|flower`).
#
#   docker build -t orchestrator .                  # from python:3.11-slim
#   docker build --build-arg BASE_IMAGE=local/python:3.11 -t orchestrator .
#
# BASE_IMAGE needs python3 (3.11+) with venv. Behind a TLS-intercepting proxy, put its CA
# bundle in the build context as *.crt and pass --build-arg PIP_CERT=/src/<file>.crt; another
# package index goes in PIP_INDEX_URL. Both are used by the build stage only: neither the
# bundle nor the arguments reach the final image.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT=
ARG PIP_INDEX_URL=
LABEL org.opencontainers.image.title="orchestrator-build-stage"
WORKDIR /src
# Dependencies first, exactly as requirements.lock pins them (hashes checked), so a source
# change keeps this layer cached. requirements.lock always matches, so *.crt may match nothing.
COPY requirements.lock *.crt ./
RUN set -eu; \
    [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    python3 -m venv /opt/orchestrator; \
    /opt/orchestrator/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes -r requirements.lock
COPY . .
# The package goes to site-packages; the worker's own top-level modules (worker.py,
# celeryconfig.py, tasks/) to /opt/orchestrator/app, on PYTHONPATH below, so that
# `celery -A worker` finds them from any working directory.
RUN set -eu; \
    [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    /opt/orchestrator/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps .; \
    mkdir /opt/orchestrator/app; \
    cp -R worker.py celeryconfig.py tasks /opt/orchestrator/app/

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="orchestrator" \
      org.opencontainers.image.description="Tool executions and relics on Docker hosts, as Celery tasks"
# An unprivileged user; the entrypoint lets it reach the Docker socket (see below).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/orchestrator \
        --shell /usr/sbin/nologin orchestrator \
 && install -d -o orchestrator -g orchestrator /var/lib/orchestrator
COPY --from=build /opt/orchestrator /opt/orchestrator
COPY scripts/docker-entrypoint.sh /usr/local/bin/orchestrator-entrypoint
ENV PATH=/opt/orchestrator/bin:$PATH \
    PYTHONPATH=/opt/orchestrator/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/orchestrator
WORKDIR /var/lib/orchestrator
# Started as root, the entrypoint adds `orchestrator` to the group owning the Docker socket
# and drops to it. Started as a non-root user (`user:` + `group_add:` with the socket's
# group id), it runs the command as it is.
ENTRYPOINT ["orchestrator-entrypoint"]
CMD ["celery", "-A", "worker", "worker", "-l", "info"]
