"""Pydantic models whose schemas are built after start-up, not at import.

Building a schema is pure Python work: JobResult's and the state file's took ~40 ms of every
command's start-up, before any of its work began (issue 18). A model registered here declares
``defer_build`` and is built at its first use, or by :func:`build_deferred`, which a job calls
at a moment it waits anyway (a backup: while pg_dump reads its catalog).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

Model = TypeVar("Model", bound=type[BaseModel])

_REGISTERED: list[type[BaseModel]] = []


def deferred(model: Model) -> Model:
    """Class decorator: ``model`` (whose config sets ``defer_build``) is built by
    :func:`build_deferred`, if not before."""
    if not model.model_config.get("defer_build"):
        raise TypeError(f"{model.__name__} must set defer_build=True to be deferred")
    _REGISTERED.append(model)
    return model


def build_deferred() -> None:
    """Build every registered model's schema that is not built yet."""
    for model in _REGISTERED:
        if not model.__pydantic_complete__:
            model.model_rebuild()
