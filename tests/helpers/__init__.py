"""Shared test helpers. Imported as ``helpers.*``: tests/ has no __init__.py, so pytest puts
tests/ (not the repo root) on sys.path. If tests/ ever becomes a package, switch to
``tests.helpers.*``.
"""
