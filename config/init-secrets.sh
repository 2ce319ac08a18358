#!/bin/sh
# The `secrets-init` service of docker-compose.backup.yml: puts the database password where
# the postgres server and the db-backup sidecar read it (the `secrets` volume, mounted at
# /run/secrets in both), before either starts.
#
#   config/postgres_password exists -> its content is used (your password; it wins, every time);
#   else the volume already has one -> kept (the one the server was initialised with);
#   else (the very first `up`)      -> a random one is generated and kept in the volume.
#
# It never prints the password. To read a generated one:
#   docker compose -f docker-compose.backup.yml run --rm db-backup cat /run/secrets/postgres_password
#
# The file is written to a temporary name and renamed, mode 0440, owner 10001 (the sidecar's
# user; the postgres image reads it as root at start-up).
set -eu

source_file="${SOURCE_FILE:-/config/postgres_password}"
target_dir="${TARGET_DIR:-/run/secrets}"
owner="${SECRET_OWNER:-10001:10001}"
target="$target_dir/postgres_password"
tmp="$target_dir/.postgres_password.tmp"

umask 077
if [ -f "$source_file" ]; then
    if [ ! -s "$source_file" ]; then
        echo "secrets-init: $source_file is empty; put the database password in it" >&2
        exit 1
    fi
    cat "$source_file" > "$tmp"
    what="the password from config/postgres_password"
elif [ -s "$target" ]; then
    echo "secrets-init: keeping the database password already in the secrets volume"
    exit 0
else
    # 24 random bytes, base64: 32 characters, no quoting trouble anywhere.
    head -c 24 /dev/urandom | base64 | tr -d '\n' > "$tmp"
    what="a new random password (first run: no config/postgres_password)"
fi
chmod 0440 "$tmp"
chown "$owner" "$tmp"
mv -f "$tmp" "$target"
echo "secrets-init: database password in place: $what"
