"""The lowest pydantic pyproject.toml allows has every model configuration key backupd uses.

A key that pydantic does not know yet is not refused, only ignored: below 2.11,
``serialize_by_alias`` did nothing, so the drill's result would have gone out as
``tablespaces_unusable`` instead of schema v1's published ``tablespaces_missing``, with no
error anywhere. The version each key came with is read from pydantic's own documentation
of ConfigDict (its ``version-added`` notes), not from a list kept here."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pydantic.config
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CONFIG_CALLS = frozenset({"ConfigDict", "SettingsConfigDict"})
ADDED = re.compile(r"version-added \| v(\d+(?:\.\d+)*)")


def keys_added() -> dict[str, Version]:
    """pydantic's ConfigDict keys, each with the version that brought it (its note's)."""
    tree = ast.parse(Path(pydantic.config.__file__).read_text())
    [config] = [node for node in tree.body
                if isinstance(node, ast.ClassDef) and node.name == "ConfigDict"]
    added: dict[str, Version] = {}
    for annotated, documented in zip(config.body, config.body[1:], strict=False):
        if (isinstance(annotated, ast.AnnAssign) and isinstance(annotated.target, ast.Name)
                and isinstance(documented, ast.Expr)
                and isinstance(documented.value, ast.Constant)):
            found = ADDED.search(str(documented.value.value))
            if found:
                added[annotated.target.id] = Version(found.group(1))
    return added


def keys_used() -> dict[str, list[str]]:
    """Each configuration key backupd's models set, with where."""
    used: dict[str, list[str]] = {}
    for path in sorted((REPO / "backupd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in CONFIG_CALLS):
                for keyword in node.keywords:
                    if keyword.arg is not None:
                        where = f"{path.relative_to(REPO)}:{node.lineno}"
                        used.setdefault(keyword.arg, []).append(where)
    return used


def pydantic_floor() -> Version:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [requirement] = [Requirement(line) for line in declared
                     if Requirement(line).name.lower() == "pydantic"]
    [floor] = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return floor


def test_the_notes_are_found() -> None:
    # Guards the check below against a pydantic whose notes it no longer reads.
    assert keys_added().get("serialize_by_alias") == Version("2.11")


def test_every_configuration_key_used_exists_in_the_lowest_pydantic_allowed() -> None:
    floor, added = pydantic_floor(), keys_added()
    too_new = {key: (str(added[key]), where) for key, where in keys_used().items()
               if key in added and added[key] > floor}
    assert not too_new, (f"pyproject.toml allows pydantic {floor}, which ignores (without an "
                         f"error) these keys that came later: {too_new}")
