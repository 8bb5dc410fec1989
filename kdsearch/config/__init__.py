"""The study file as typed values: ``spec.py`` (``StudySpec``: pydantic, every field's rule and the error that
names it), ``load.py`` (a dict, a TOML file or ``--set`` overrides → a validated ``StudySpec``) and ``catalog.py``
(the methods' search spaces and flags, the model names).

Lowest layer above ``errors``/``registry``: imports no other kdsearch subpackage and no torch, so checking a
study file is quick (the import-linter contracts in ``pyproject.toml``).
"""
