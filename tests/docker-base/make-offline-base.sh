#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm, for a host whose Docker engine has no registry
# but whose apt reaches a Debian mirror (this project's test machines): Debian 12's own
# Python 3.11 in a debootstrap root, imported as an image. Then
#
#   BACKUPD_TEST_DOCKER_BUILD_ARGS="PYTHON_IMAGE=backupd-base/python:3.11-bookworm \
#       PG_PACKAGES_FROM=debian PG_CLIENT_MAJORS=15" pytest -m docker tests/test_docker_image.py
#
# (the line this script prints) builds the real Dockerfile on it (PostgreSQL from Debian: bookworm carries 15 only).
# Root, debootstrap and a running Docker engine are needed. The host's extra CA
# certificates (a TLS-inspecting proxy's) go into the image so that pip and apt inside the
# build trust what the host trusts.
set -euo pipefail

TAG="${1:-backupd-base/python:3.11-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
# --one-file-system: a debootstrap cut short may leave /proc or /sys mounted inside the root.
trap 'rm -rf --one-file-system "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >/dev/null
# What the python image offers that Debian's Python does not: `python` and `pip` on PATH,
# and pip allowed to install beside the system's packages (PEP 668's marker removed).
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$TAG" >/dev/null
echo "export BACKUPD_TEST_DOCKER_BUILD_ARGS=\"PYTHON_IMAGE=$TAG PG_PACKAGES_FROM=debian PG_CLIENT_MAJORS=15\""
