# syntax=docker/dockerfile:1
#
# backupd: the PostgreSQL backup sidecar.
#
#   docker build -t backupd .
#
# The image carries the PostgreSQL client tools (pg_dump, psql, pg_restore, pg_basebackup,
# pg_receivewal, pg_verifybackup) and the server binaries (postgres, pg_ctl, initdb,
# pg_waldump) of every major in PG_CLIENT_MAJORS side by side, in
# /usr/lib/postgresql/<major>/bin. For each job backupd runs the client tools of the server's
# own major, else the nearest newer one (pg_dump cannot dump a newer server; pg_dump 17 writes
# SQL a 16 server rejects). So one image backs up and restores servers 13 to 17, and keeps
# working across a server upgrade; `backupd status` shows which client it uses. A server
# newer than every client is refused in one line ("pg_dump X is older than the server (Y) ...").
# The server binaries are for PITR drills and `backupd recover` only (a private server on a
# recovered copy, pg_waldump reading the archive): they must be of the archive's own major,
# which is why every major's are here. No cluster is created in the image.
# Slimmer image, fewer servers: docker build --build-arg PG_CLIENT_MAJORS="16 17" .
# (Each major costs ~20 MiB, plus ~185 MiB once for the server packages' shared libraries
# (LLVM, ICU, locales); an estimate, see docs/configuration.md.)

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

ARG PG_CLIENT_MAJORS="13 14 15 16 17"
# The PostgreSQL Debian repository's signing key (apt.postgresql.org, key ACCC4CF8), pinned
# by its full fingerprint: the build fails if the key downloaded is any other.
ARG PGDG_KEY_FINGERPRINT=B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8
# Where the PostgreSQL packages come from: "pgdg" (apt.postgresql.org, every major), or
# "debian": the base image's own Debian release, for a build host that reaches only a Debian
# mirror. Debian carries one major per release (bookworm: 15), so PG_CLIENT_MAJORS must then
# be that one; apt-get fails the build on any other (no such package).
ARG PG_PACKAGES_FROM=pgdg

# No PostgreSQL directory on PATH: /usr/bin/pg_dump is postgresql-common's wrapper, and
# backupd picks the versioned directory itself (backupd/pipeline/clients.py).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DB_BACKUP_DIR=/backups \
    HEALTH_PORT=8080

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# PostgreSQL client tools and server binaries from the PGDG repository, which carries every
# supported major (or Debian's own release: PG_PACKAGES_FROM). Versions are pinned to the major (PGDG keeps only the newest minor of each
# major, so an exact pin would stop building). Left out: man pages (the base image already
# leaves out /usr/share/man and translations) and the servers' LLVM bitcode (JIT inlining
# only; backupd's private servers run with jit=off): ~20 MiB per major remain. Kept: psql.1
# and postmaster.1, which the packages' postinst registers with update-alternatives as the
# main file of a link group (without them the install fails).
# postgresql-common would create a cluster ("main") with each server package: it is told
# not to before any server is installed, and the build fails if a cluster exists after.
# en_US.UTF-8 is generated as the official postgres image does, so a private server can open
# that image's databases (a recovered cluster needs its databases' locales).
# ssl-cert's snakeoil key (one key in every copy of the image) is deleted: nothing uses it.
# gnupg is needed only to read the key's fingerprint, and is removed again.
# tini is PID 1: it forwards SIGTERM to backupd and reaps orphaned children.
# (DL3008: hadolint cannot see the "=${major}.*" pins built in the loop.)
# hadolint ignore=DL3008
RUN { echo 'path-exclude=/usr/share/postgresql/*/man/*'; \
         echo 'path-include=/usr/share/postgresql/*/man/man1/psql.1.gz'; \
         echo 'path-include=/usr/share/postgresql/*/man/man1/postmaster.1.gz'; \
       } > /etc/dpkg/dpkg.cfg.d/backupd-no-pg-man \
    && echo 'path-exclude=/usr/lib/postgresql/*/lib/bitcode/*' \
        > /etc/dpkg/dpkg.cfg.d/backupd-no-pg-bitcode \
    && apt-get update \
    && if [ "$PG_PACKAGES_FROM" = pgdg ]; then \
           apt-get install -y --no-install-recommends "gnupg=2.2.*" \
           && install -d -m 0755 /usr/share/postgresql-common/pgdg \
           && key=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
           && python3 -c "import sys, urllib.request; urllib.request.urlretrieve('https://www.postgresql.org/media/keys/ACCC4CF8.asc', sys.argv[1])" "$key" \
           && keys="$(gpg --batch --quiet --show-keys --with-colons "$key")" \
           && primary="$(awk -F: '$1 == "fpr" { print $10; exit }' <<< "$keys")" \
           && { { [ "$(grep -c '^pub:' <<< "$keys")" = 1 ] && [ "$primary" = "$PGDG_KEY_FINGERPRINT" ]; } \
                || { echo "PGDG signing key: fingerprint $primary, expected $PGDG_KEY_FINGERPRINT" >&2; exit 1; }; } \
           && apt-get purge -y --auto-remove gnupg \
           && . /etc/os-release \
           && echo "deb [signed-by=$key] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
               > /etc/apt/sources.list.d/pgdg.list \
           && apt-get update; \
       elif [ "$PG_PACKAGES_FROM" != debian ]; then \
           echo "PG_PACKAGES_FROM is '$PG_PACKAGES_FROM': use pgdg or debian" >&2; exit 1; \
       fi \
    && apt-get install -y --no-install-recommends postgresql-common locales \
    && sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' \
        /etc/postgresql-common/createcluster.conf \
    && grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf \
    && localedef -i en_US -c -f UTF-8 en_US.UTF-8 \
    && locale -a | grep -qx 'en_US.utf8' \
    && packages=() \
    && for major in $PG_CLIENT_MAJORS; do \
           packages+=("postgresql-client-${major}=${major}.*" "postgresql-${major}=${major}.*"); \
       done \
    && apt-get install -y --no-install-recommends "${packages[@]}" "tini=0.19.*" \
    && rm -rf /var/lib/apt/lists/* /etc/ssl/private/ssl-cert-snakeoil.key \
        /etc/ssl/certs/ssl-cert-snakeoil.pem \
    && { [ -z "$(ls -A /etc/postgresql 2>/dev/null)" ] \
         || { echo "a PostgreSQL cluster was created in the image" >&2; exit 1; }; } \
    && for major in $PG_CLIENT_MAJORS; do \
           for tool in pg_dump pg_restore psql pg_basebackup pg_receivewal pg_verifybackup \
                       postgres pg_ctl initdb pg_waldump; do \
               "/usr/lib/postgresql/${major}/bin/${tool}" --version | grep -q " ${major}\." || exit 1; \
           done; \
       done \
    && groupadd --system --gid 10001 backupd \
    && useradd --system --uid 10001 --gid backupd --home-dir /home/backupd \
        --create-home --shell /usr/sbin/nologin backupd \
    && install -d -m 0700 -o backupd -g backupd /backups

# Python dependencies from the lock file, every file checked against its hash: two builds of
# one commit install the same versions. Then backupd itself, without resolving anything.
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && pip check \
    && rm -rf /wheels /tmp/requirements.lock \
    && backupd version

# A named volume mounted here starts with this directory's owner and mode (backupd, 0700).
VOLUME ["/backups"]
# The health endpoint (/healthz) and Prometheus metrics (/metrics); HEALTH_PORT.
EXPOSE 8080

# A fixed uid/gid (10001), so a bind-mounted backup directory or secret file can be given
# to it on the host: `chown 10001 DIR`.
USER 10001:10001
WORKDIR /home/backupd

# `backupd health` does not ask the daemon over HTTP: it reads DB_BACKUP_DIR. Unhealthy
# when the newest verified backup is older than BACKUP_MAX_AGE_HOURS (or there is none),
# when DRILL_MAX_AGE_DAYS asks for a recent drill and there is none, or when the daemon's
# state file there has gone stale (the daemon is stuck or gone). See docs/operations.md.
HEALTHCHECK --interval=60s --timeout=15s --start-period=120s --retries=3 \
    CMD ["backupd", "health"]

ENTRYPOINT ["tini", "--"]
CMD ["backupd", "run"]
