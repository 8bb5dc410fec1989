"""kdsearch: search knowledge-distillation hyperparameters (method, temperature, alpha) with Optuna.

The Python API (``kdsearch.run_study``, ``kdsearch.export_student_of``) does what the ``kdsearch``
command does, with models and datasets handed over as objects; see ``kdsearch/api.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_study", "export_student_of", "StudyResult"]


def __getattr__(name: str) -> Any:  # imported on first use: ``import kdsearch`` stays light (no torch)
    if name in ("run_study", "export_student_of"):
        from . import api

        return getattr(api, name)
    if name == "StudyResult":
        from .runner import StudyResult

        return StudyResult
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")
