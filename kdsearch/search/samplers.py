"""``BalancedStudentSampler``: with candidate students, each trial takes the student that has had the fewest trials,
and the wrapped sampler (TPE) samples everything else.

Why: TPE on one objective learns that the biggest student scores highest and then samples mostly it, so the
small sizes of the front get a handful of trials. Taking the student in turn gives every size the same number
of trials (±1, across parallel workers too: trials still running count), and the per-student median pruner then
stops the bad ones early (benchmarks/bench_front.py measures it).
"""

from __future__ import annotations

from typing import Any, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

STUDENT_PARAM = "student"


class BalancedStudentSampler(optuna.samplers.BaseSampler):
    """``base`` for every param but ``student``, which is the candidate (of ``students``, in their order among
    equals) with the fewest trials in the study so far, whatever their state."""

    def __init__(self, base: optuna.samplers.BaseSampler, students: Sequence[str]):
        if not students:
            raise ValueError("BalancedStudentSampler needs the candidate students")
        self.base = base
        self.students = list(students)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(study, trial)
        return {name: d for name, d in space.items() if name != STUDENT_PARAM}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name != STUDENT_PARAM:
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        choices = list(getattr(param_distribution, "choices", ()))
        counts = dict.fromkeys((s for s in self.students if s in choices), 0)
        for t in study.get_trials(deepcopy=False):
            name = t.params.get(STUDENT_PARAM)
            if t.number != trial.number and name in counts:
                counts[name] += 1
        if not counts:  # a distribution that names none of ours: not a candidate list we know
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        return min(counts, key=lambda s: (counts[s], self.students.index(s)))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
