"""Pruners: Optuna's, plus a median that compares a trial only with trials of its own method.

A study over several methods whose curves start differently (dkd warms up, a high-T kd learns
slowly at first) would otherwise prune whole methods early with a median over all of them.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

PRUNERS = ("median_per_method", "median", "successive_halving", "hyperband", "none")


class PerMethodMedianPruner(optuna.pruners.BasePruner):
    """Prune when a trial's best value so far is worse than the median, at the same epoch, of the
    completed trials **of its own method** (param ``method``); like ``MedianPruner`` otherwise.

    ``n_startup_trials``: completed trials a method needs before its trials may be pruned;
    ``n_warmup_steps``: a trial is not pruned before it reports this step.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        method = trial.params.get("method")
        peers = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.params.get("method") == method
        ]
        if len(peers) < max(self.n_startup_trials, 1):
            return False
        values = [t.intermediate_values[step] for t in peers if step in t.intermediate_values]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return False
        mine = [v for s, v in trial.intermediate_values.items() if s <= step and not math.isnan(v)]
        if not mine:
            return True  # only NaNs so far: a diverged trial
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        median = statistics.median(values)
        return max(mine) < median if maximize else min(mine) > median


def build_pruner(name: str, *, startup_trials: int, warmup_epochs: int, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``name`` (one of ``PRUNERS``) for trials that report epochs 1..``epochs`` as steps.

    Medians may prune once a trial reports epoch ``warmup_epochs + 1``; successive halving and
    Hyperband start their first rung at epoch 1 and keep a third of the trials at each rung.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "median_per_method":
        return PerMethodMedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
