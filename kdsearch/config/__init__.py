"""The study file as typed values: ``spec.py`` (``StudySpec``: pydantic, TOML, ``--set``, every field's
rule and the error that names it) and ``catalog.py`` (the methods' search spaces and flags, the model names).

Lowest layer above ``errors``/``registry``: imports no other kdsearch subpackage and no torch, so checking a
study file is quick (the import-linter contracts in ``pyproject.toml``).
"""
