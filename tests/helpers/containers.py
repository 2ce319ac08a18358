"""A Docker engine for the container tests: whether one answers, and the image built from this
checkout's Dockerfile.

Where the engine has no registry (this project's test machines), the Dockerfile's base image
and its PostgreSQL packages come from elsewhere: ``BACKUPD_TEST_DOCKER_BUILD_ARGS`` holds
build arguments (``KEY=VALUE`` separated by spaces), for example those that
``tests/docker-base/make-offline-base.sh`` prints how to use.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_ARGS_VARIABLE = "BACKUPD_TEST_DOCKER_BUILD_ARGS"
DEFAULT_PYTHON_IMAGE = "python:3.11-slim-bookworm"  # the Dockerfile's own default


def engine_unavailable() -> str | None:
    """Why no container test can run here, or None. Asks the engine itself, not the CLI's
    presence."""
    try:
        import docker  # the Docker SDK, installed with testcontainers

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine answers a ping ({type(exc).__name__}: {exc})"
    return None


def compose_unavailable() -> str | None:
    """Why the compose stack cannot run here, or None."""
    reason = engine_unavailable()
    if reason:
        return reason
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                               check=False, timeout=30)
    except OSError as exc:
        return f"the docker CLI cannot run: {exc}"
    if probe.returncode != 0:
        return "the Docker engine answers, but the `docker compose` plugin is not installed"
    return None


def build_args() -> dict[str, str]:
    """The build arguments ``BACKUPD_TEST_DOCKER_BUILD_ARGS`` asks for (none: the defaults)."""
    words = os.environ.get(BUILD_ARGS_VARIABLE, "").split()
    malformed = [word for word in words if "=" not in word]
    if malformed:
        raise ValueError(f"{BUILD_ARGS_VARIABLE}: {malformed[0]!r} is not KEY=VALUE")
    return dict(word.split("=", 1) for word in words)


def build_image(tag: str) -> dict[str, str]:
    """Builds this checkout's Dockerfile as ``tag`` (skipping the test, saying why, when no
    engine answers or the base image cannot be had); returns the build arguments used. The
    engine's classic builder, through the SDK: no BuildKit frontend image to pull."""
    reason = engine_unavailable()
    if reason:
        pytest.skip(reason)
    import docker
    from docker.errors import BuildError, ImageNotFound

    arguments = build_args()
    base = arguments.get("PYTHON_IMAGE", DEFAULT_PYTHON_IMAGE)
    client = docker.from_env(timeout=1800)
    try:
        try:
            client.images.get(base)
        except ImageNotFound:
            try:
                client.images.pull(base)
            except Exception as exc:
                pytest.skip(f"the base image {base} is not here and cannot be pulled "
                            f"({type(exc).__name__}); make one with "
                            f"tests/docker-base/make-offline-base.sh and set {BUILD_ARGS_VARIABLE}")
        try:
            # Host networking: the build's apt and pip need the network, and an engine
            # started without a bridge (dockerd --bridge=none) has no other.
            client.images.build(path=str(REPO), tag=tag, buildargs=arguments, rm=True,
                                forcerm=True, network_mode="host", pull=False)
        except BuildError as exc:
            tail = "".join(str(chunk.get("stream", chunk.get("error", "")))
                           for chunk in list(exc.build_log)[-40:])
            pytest.fail(f"docker build failed: {exc.msg}\n{tail}")
    finally:
        client.close()
    return arguments


def remove_image(tag: str) -> None:
    import docker

    client = docker.from_env(timeout=120)
    try:
        client.images.remove(tag, force=True)
    except Exception:  # already gone, or in use by a container being removed
        pass
    finally:
        client.close()
