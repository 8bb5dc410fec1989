"""The Optuna search: the study's life in storage (``study.py``, ``storage.py``: URL → SQLite / journal /
PostgreSQL, the cross-process lock), the per-trial objective and the final comparison on the test split
(``objective.py``), pruners (``pruners.py``), the typed records a study stores (``results.py``) and paired
statistics (``stats.py``).

Imports ``distill`` and below; never ``parallel``, ``report``, ``ship`` or the commands. ``study``, ``storage``,
``pruners``, ``results`` and ``stats`` import no torch.
"""
