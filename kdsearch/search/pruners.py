"""Pruners: Optuna's, plus a median that compares a trial only with trials of its own method (or student).

A study over several methods whose curves start differently (dkd warms up, a high-T kd learns
slowly at first) would otherwise prune whole methods early with a median over all of them.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

PRUNERS = ("median_per_method", "median", "successive_halving", "hyperband", "none")


class GroupMedianPruner(optuna.pruners.BasePruner):
    """Prune when a trial's best value so far is worse than the median, at the same epoch, of the
    completed trials **of its own group**: the trials with the same values of the params ``group_by``
    (``("method",)``: its method; ``("student",)``: its candidate student); like ``MedianPruner`` otherwise.

    ``n_startup_trials``: completed trials a group needs before its trials may be pruned;
    ``n_warmup_steps``: a trial is not pruned before it reports this step.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0, group_by: tuple[str, ...] = ("method",)):
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.group_by = tuple(group_by)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        group = [trial.params.get(p) for p in self.group_by]
        peers = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if [t.params.get(p) for p in self.group_by] == group
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


class PerMethodMedianPruner(GroupMedianPruner):
    """``GroupMedianPruner`` by method: a trial is compared only with trials of its own method (param ``method``)."""

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        super().__init__(n_startup_trials, n_warmup_steps, ("method",))


def build_pruner(
    name: str, *, startup_trials: int, warmup_epochs: int, epochs: int, per_student: bool = False
) -> optuna.pruners.BasePruner:
    """The pruner ``name`` (one of ``PRUNERS``) for trials that report epochs 1..``epochs`` as steps.

    Medians may prune once a trial reports epoch ``warmup_epochs + 1``; with ``per_student`` (a study with
    candidate students, param ``student``) they compare a trial only with trials of its own student: a small
    student is not pruned for being small. Successive halving and Hyperband start their first rung at epoch 1
    and keep a third of the trials at each rung.
    """
    warmup = warmup_epochs + 1
    if name == "median" and per_student:
        return GroupMedianPruner(startup_trials, warmup, ("student",))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup)
    if name == "median_per_method":
        return GroupMedianPruner(startup_trials, warmup, ("student", "method") if per_student else ("method",))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
