# syntax=docker/dockerfile:1
#
# backupd: the PostgreSQL backup sidecar.
#
#   docker build --build-arg PG_MAJOR=16 -t backupd .
#
# PG_MAJOR is the major version of the PostgreSQL client tools (pg_dump, psql) in the
# image. It must be the SAME OR NEWER than the server's major version: pg_dump refuses to
# dump a newer server, and backupd checks this before every backup and stops with one
# line ("pg_dump X is older than the server (Y) ...") when it is not.

# Debian release pinned: the PGDG apt repository below is per release.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build the backupd wheel (the build tools stay in this stage) -------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY backupd ./backupd
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- the runtime image ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG PG_MAJOR=16

# The version-specific client directory first on PATH: backupd runs exactly PG_MAJOR's
# pg_dump/psql, not whatever Debian's pg_wrapper would pick.
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DB_BACKUP_DIR=/backups \
    HEALTH_PORT=8080

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# PostgreSQL client tools from the PGDG repository (apt.postgresql.org), which carries every
# supported major version, so PG_MAJOR can match any server. Versions are pinned to the major
# (PGDG keeps only the newest minor of each major, so an exact pin would stop building).
# tini is PID 1: it forwards SIGTERM to backupd and reaps orphaned children.
RUN install -d -m 0755 /usr/share/postgresql-common/pgdg \
    && python3 -c "import urllib.request; urllib.request.urlretrieve('https://www.postgresql.org/media/keys/ACCC4CF8.asc', '/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc')" \
    && . /etc/os-release \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        "postgresql-client-${PG_MAJOR}=${PG_MAJOR}.*" \
        "tini=0.19.*" \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version | grep -q " ${PG_MAJOR}\." \
    && groupadd --system --gid 10001 backupd \
    && useradd --system --uid 10001 --gid backupd --home-dir /home/backupd \
        --create-home --shell /usr/sbin/nologin backupd \
    && install -d -m 0700 -o backupd -g backupd /backups

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && backupd version

# A named volume mounted here starts with this directory's owner and mode (backupd, 0700).
VOLUME ["/backups"]
# The health endpoint (/healthz) and Prometheus metrics (/metrics); HEALTH_PORT.
EXPOSE 8080

# A fixed uid/gid (10001), so a bind-mounted backup directory or secret file can be given
# to it on the host: `chown 10001 DIR`.
USER 10001:10001
WORKDIR /home/backupd

# `backupd health` asks the running daemon's health endpoint; unhealthy means the last
# backup failed or is too old, or the daemon is stuck (see docs/operations.md).
HEALTHCHECK --interval=60s --timeout=15s --start-period=120s --retries=3 \
    CMD ["backupd", "health"]

ENTRYPOINT ["tini", "--"]
CMD ["backupd", "run"]
