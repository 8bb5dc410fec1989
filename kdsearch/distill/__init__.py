"""Distillation on one device: the methods' losses (``methods.py``: kd, lskd, dkd, cosine, hint, …, pure
functions), ``fit``/``evaluate`` and ``TrialPlan`` (``train.py``), K students as one vmapped model
(``stacked.py``), accuracy/AUC/cost (``metrics.py``) and the teacher trained or loaded once with its cached
outputs (``teacher.py``).

Knows nothing of Optuna: imports ``data``, ``nets``, ``config`` and the shared helpers only.
"""
