"""What the report shows, as plain data: the study's trials, best per T bin and per method, and the
final comparison's statistics (paired by seed). No plotting here: ``figures.py`` draws, ``page.py``
lays out the page and the terminal summary.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import optuna

from ..search.results import COST_LABELS, FinalComparison, SeedRun, StudentCost
from ..search.stats import PairedDifference, paired_by_seed, with_holm
from ..search.study import SPEC_ATTR, best_of_each_method, params_of, value_of

METRIC_LABELS = {"accuracy": "accuracy", "auc": "AUC"}
METHOD_ORDER = ("kd", "lskd", "dkd", "cosine", "hint", "untuned_kd", "pseudo_label", "scratch")
METHOD_COLOURS = {
    "kd": "#1f77b4",
    "lskd": "#ff7f0e",
    "dkd": "#2ca02c",
    "cosine": "#9467bd",
    "hint": "#8c564b",
    "untuned_kd": "#aec7e8",  # kd's blue, lighter: kd at a fixed recipe
    "pseudo_label": "#bcbd22",
    "scratch": "#7f7f7f",
}
_EXTRA_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#393b79", "#637939", "#843c39")
TEACHER_COLOUR = "#d62728"


# --------------------------------------------------------------------------- small helpers


def method_colour(method: str) -> str:
    """The method's colour, the same in every figure (unknown methods get a stable extra colour)."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _EXTRA_COLOURS[sum(map(ord, method)) % len(_EXTRA_COLOURS)]


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def metric_label(metric: str | None) -> str:
    """``accuracy`` / ``AUC``, or ``objective`` when the metric is unknown."""
    return METRIC_LABELS.get(metric or "", "objective")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_params(params: Mapping[str, float], skip: Iterable[str] = ()) -> str:
    """``alpha=0.31, beta=2.4`` (3 significant digits), leaving out ``skip``."""
    skipped = set(skip)
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items() if k not in skipped)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pp(diff: float | None) -> str:
    return "—" if diff is None else f"{diff:+.2f} pp"


# --------------------------------------------------------------------------- extraction (reads the study)


@dataclass(frozen=True, eq=True)
class TrialPoint:
    """What the report needs of one trial: its method and params, objective value and last val metrics."""

    number: int
    state: str  # TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    method: str
    params: Mapping[str, float]
    value: float | None = None  # the objective (COMPLETE trials only)
    accuracy: float | None = None  # validation accuracy of the last epoch run
    auc: float | None = None  # validation AUC of the last epoch run
    epochs: int | None = None  # epochs run (a pruned trial's last reported epoch)
    student: str | None = None  # its candidate student (param ``student``), None without candidates

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    def metric(self, name: str) -> float | None:
        return {"accuracy": self.accuracy, "auc": self.auc}.get(name)


def trial_points(trials: Iterable[optuna.trial.FrozenTrial]) -> list[TrialPoint]:
    """Every trial of ``trials`` (a study's ``get_trials()``) that has sampled a method, in trial-number order."""
    points = []
    for t in trials:
        if "method" not in t.params:
            continue
        method, params = params_of(t)
        complete = t.state == optuna.trial.TrialState.COMPLETE
        points.append(
            TrialPoint(
                number=t.number,
                state=t.state.name,
                method=method,
                params=params,
                value=value_of(t) if complete else None,
                accuracy=t.user_attrs.get("accuracy"),
                auc=t.user_attrs.get("auc"),
                epochs=t.user_attrs.get("epochs_run"),
                student=t.params.get("student"),
            )
        )
    return sorted(points, key=lambda p: p.number)


def study_objective(study: optuna.Study) -> str | None:
    """The metric the study maximised (``accuracy`` or ``auc``), from the stored spec or final comparison."""
    spec = study.user_attrs.get(SPEC_ATTR) or {}
    objective = (spec.get("search") or {}).get("objective") if isinstance(spec, dict) else None
    if objective is None:
        final = FinalComparison.read(study)
        objective = final.objective if final else None
    return objective if objective in METRIC_LABELS else None


def _by_method(points: Iterable[TrialPoint]) -> dict[str, list[TrialPoint]]:
    grouped: dict[str, list[TrialPoint]] = {}
    for p in points:
        grouped.setdefault(p.method, []).append(p)
    return {m: grouped[m] for m in sorted(grouped, key=method_sort_key)}


# --------------------------------------------------------------------------- best per bin


@dataclass(frozen=True)
class BinBest:
    """The best trial of one x bin: drawn at the trial's own x, with the bin's edges and size."""

    x: float
    y: float
    number: int
    count: int
    low: float
    high: float


def best_per_bin(points: Sequence[tuple[float, float, int]], bins: int = 8) -> list[BinBest]:
    """The best (max y) of ``(x, y, trial_number)`` points in each of ``bins`` log-spaced x bins.

    Bins span the points' own x range; empty bins are left out. Each bin's best is reported at the
    x of the trial that achieved it, never at an invented bin centre.
    """
    if not points:
        return []
    lo, hi = min(x for x, _, _ in points), max(x for x, _, _ in points)
    if lo == hi:
        x, y, n = max(points, key=lambda p: p[1])
        return [BinBest(x, y, n, len(points), lo, hi)]
    span = math.log(hi) - math.log(lo)
    edges = [math.exp(math.log(lo) + span * i / bins) for i in range(bins + 1)]
    members: dict[int, list[tuple[float, float, int]]] = {}
    for p in points:
        i = min(bins - 1, int(bins * (math.log(p[0]) - math.log(lo)) / span))
        members.setdefault(i, []).append(p)
    out = []
    for i in sorted(members):
        x, y, n = max(members[i], key=lambda p: p[1])
        out.append(BinBest(x, y, n, len(members[i]), edges[i], edges[i + 1]))
    return out


def best_per_bin_line(
    points: Sequence[tuple[float, float, int]], max_bins: int = 8, min_per_bin: int = 2
) -> list[BinBest]:
    """``best_per_bin`` when the data can carry it, else ``[]`` (the line is then not drawn).

    Uses about one bin per 3 trials (at most ``max_bins``); needs at least 3 non-empty bins and
    more than half of them holding ``min_per_bin`` trials, so a "best" is rarely a lone trial.
    """
    bins = min(max_bins, len(points) // 3)
    if bins < 3:
        return []
    binned = best_per_bin(points, bins)
    well_filled = sum(b.count >= min_per_bin for b in binned)
    if len(binned) < 3 or well_filled * 2 <= len(binned):
        return []
    return binned


# --------------------------------------------------------------------------- best per method (validation)


@dataclass(frozen=True)
class MethodBest:
    """One row of the best-per-method table (validation split)."""

    method: str
    trial: int | None  # best completed trial by the objective; None if none completed
    params: Mapping[str, float]
    value: float | None
    accuracy: float | None
    auc: float | None
    complete: int
    pruned: int
    other: int  # failed or still running


def best_per_method(
    trials: Sequence[optuna.trial.FrozenTrial], points: Sequence[TrialPoint] | None = None
) -> list[MethodBest]:
    """The best completed trial of each method among ``trials`` (a study's, fetched once by the caller;
    ``study.best_of_each_method``: the trials the final comparison retrains), with each method's trial counts;
    ``points``: ``trial_points(trials)`` when the caller has them.

    Sorted best first; methods with no completed trial come last.
    """
    if points is None:
        points = trial_points(trials)
    best_numbers = {m: t.number for m, t in best_of_each_method(trials).items()}
    rows = []
    for method, pts in _by_method(points).items():
        best = next((p for p in pts if p.number == best_numbers.get(method)), None)
        n_complete = sum(p.complete for p in pts)
        n_pruned = sum(p.state == "PRUNED" for p in pts)
        rows.append(
            MethodBest(
                method=method,
                trial=best.number if best else None,
                params=dict(best.params) if best else {},
                value=best.value if best else None,
                accuracy=best.accuracy if best else None,
                auc=best.auc if best else None,
                complete=n_complete,
                pruned=n_pruned,
                other=len(pts) - n_complete - n_pruned,
            )
        )
    return sorted(rows, key=lambda r: (r.value is None, -(r.value or 0.0), method_sort_key(r.method)))


def best_per_student(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, MethodBest]:
    """With candidate students (param ``student``): each student's best completed trial as a ``MethodBest`` row
    (its method, params and scores), with that student's trial counts over all methods; {} without candidates."""
    names = sorted({t.params["student"] for t in trials if "student" in t.params})
    out = {}
    for name in names:
        rows = best_per_method([t for t in trials if t.params.get("student") == name])
        if not rows:
            continue
        out[name] = replace(
            rows[0],
            complete=sum(r.complete for r in rows),
            pruned=sum(r.pruned for r in rows),
            other=sum(r.other for r in rows),
        )
    return out


# --------------------------------------------------------------------------- final comparison (test)


@dataclass(frozen=True)
class StudentStats:
    """Test-split numbers of one retrained student over its seeds."""

    label: str
    method: str
    params: Mapping[str, float]
    trial: int | None
    seeds: tuple[int, ...]
    accuracy: tuple[float, ...]
    auc: tuple[float, ...]
    accuracy_mean: float
    accuracy_std: float
    auc_mean: float
    auc_std: float
    accuracy_vs_scratch_pp: float | None  # (mean - scratch mean) × 100; None for scratch itself
    auc_vs_scratch_pp: float | None
    # metric → the per-seed difference to the baseline trained with the same seeds (None: no baseline / itself)
    vs_scratch: Mapping[str, PairedDifference] | None = None
    vs_pseudo_label: Mapping[str, PairedDifference] | None = None
    vs_untuned_kd: Mapping[str, PairedDifference] | None = None  # a tuned student minus untuned KD: did tuning pay?
    student: str | None = None  # the candidate student (None: the study's one student)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def values(self, metric: str) -> tuple[float, ...]:
        return self.accuracy if metric == "accuracy" else self.auc

    def mean_std(self, metric: str) -> tuple[float, float]:
        return (self.accuracy_mean, self.accuracy_std) if metric == "accuracy" else (self.auc_mean, self.auc_std)


def _paired(runs: Sequence[SeedRun], base: Sequence[SeedRun] | None) -> dict[str, PairedDifference] | None:
    """Per metric, ``runs`` minus ``base`` paired by seed; None without a base or a shared seed."""
    if not base:
        return None
    out = {
        m: paired_by_seed({r.seed: getattr(r, m) for r in runs}, {r.seed: getattr(r, m) for r in base})
        for m in ("accuracy", "auc")
    }
    return None if any(d is None for d in out.values()) else out  # type: ignore[return-value]


def final_stats(final: FinalComparison) -> list[StudentStats]:
    """Mean ± sample std per student; each student's difference to scratch (the scratch student of the same
    teacher mode) and each distilled student's to pseudo-label: as a difference of means in percentage
    points and paired by seed (``stats.paired_by_seed``: mean, std, 95% t-interval).

    Students are ordered like the methods everywhere else (kd, lskd, dkd, cosine, hint, …, scratch last).
    """
    # each distilled student against the scratch student trained with the same teacher mode
    # (a 'consistent' winner saw augmented batches, so its baseline is the augmented scratch)
    # with candidate students, each one's scratch student is its own architecture's
    base_runs: dict[tuple[str | None, str], list[SeedRun]] = {}
    pseudo_runs = untuned_runs = None
    for student in final.students:
        if student.is_scratch and student.runs:
            base_runs.setdefault((student.student, student.teacher_mode), student.runs)
        elif student.method == "pseudo_label" and student.runs:
            pseudo_runs = student.runs
        elif student.baseline == "untuned_kd" and student.runs:
            untuned_runs = student.runs
    base_means = {  # each baseline's means, computed once
        mode: {m: statistics.fmean(getattr(r, m) for r in runs) for m in ("accuracy", "auc")}
        for mode, runs in base_runs.items()
    }
    out = []
    for s in final.students:
        if not s.runs:
            continue
        acc = tuple(r.accuracy for r in s.runs)
        roc = tuple(r.auc for r in s.runs)
        (am, asd), (um, usd) = mean_std(acc), mean_std(roc)
        mode = (s.student, s.teacher_mode if (s.student, s.teacher_mode) in base_runs else "cached")
        scratch_runs = None if s.is_scratch else base_runs.get(mode)
        base = base_means.get(mode) if scratch_runs else None
        out.append(
            StudentStats(
                label=s.label,
                method=s.baseline or s.method,
                params=dict(s.params),
                trial=s.trial,
                seeds=tuple(r.seed for r in s.runs),
                accuracy=acc,
                auc=roc,
                accuracy_mean=am,
                accuracy_std=asd,
                auc_mean=um,
                auc_std=usd,
                accuracy_vs_scratch_pp=(am - base["accuracy"]) * 100 if base else None,
                auc_vs_scratch_pp=(um - base["auc"]) * 100 if base else None,
                vs_scratch=_paired(s.runs, scratch_runs),
                vs_pseudo_label=None if s.is_baseline else _paired(s.runs, pseudo_runs),
                vs_untuned_kd=None if s.is_baseline else _paired(s.runs, untuned_runs),
                student=s.student,
            )
        )
    if final.front:  # candidates: cheapest first, each one's distilled student before its scratch
        order = {name: i for i, name in enumerate(final.front)}
        out.sort(key=lambda r: (order.get(r.student, len(order)), r.method in ("scratch", "pseudo_label"), r.label))
        return _holm_corrected(out)
    return _holm_corrected(sorted(out, key=lambda s: method_sort_key(s.method)))


# (the baseline as the table and the summary name it, its StudentStats field), in the order they are shown
COMPARED_WITH = (("scratch", "vs_scratch"), ("untuned KD", "vs_untuned_kd"), ("pseudo-label", "vs_pseudo_label"))


def _holm_corrected(rows: list[StudentStats]) -> list[StudentStats]:
    """``rows`` with each family of comparisons (every row against one baseline, per metric) Holm-corrected
    (``stats.with_holm``): with several rows against one baseline, "significant" controls the family-wise error."""
    out = list(rows)
    for _, name in COMPARED_WITH:
        at = [i for i, r in enumerate(out) if getattr(r, name)]
        for metric in ("accuracy", "auc"):
            corrected = with_holm([getattr(out[i], name)[metric] for i in at])
            for i, d in zip(at, corrected):
                out[i] = replace(out[i], **{name: {**getattr(out[i], name), metric: d}})
    return out


def holm_note(stats: Sequence[StudentStats]) -> str | None:
    """The sentence saying which comparisons were Holm-corrected, or None when none was."""
    corrected = [
        label
        for label, name in COMPARED_WITH
        if any(
            (getattr(s, name) or {}).get("accuracy") and getattr(s, name)["accuracy"].holm_p is not None for s in stats
        )
    ]
    if not corrected:
        return None
    return (
        f"Several students are compared with the same baseline ({', '.join(corrected)}): their significance is "
        "Holm-corrected across those rows, per metric (the 95% intervals are each row's own)."
    )


def budget_warning(
    trials: Sequence[optuna.trial.FrozenTrial], final: FinalComparison | None, *, gain: float = 0.01
) -> str | None:
    """One line when the training budget looks too small for the comparison to mean much: at least half of the
    completed trials (two at least) still raised their validation objective by ``gain`` or more in their last
    epoch, i.e. they were stopped while learning; with the scratch student's test gap to the teacher. None when
    the students had leveled off (or ran one epoch: nothing to tell from)."""
    histories = [
        [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and len(t.intermediate_values) >= 2
    ]
    rising = [h for h in histories if h[-1] - max(h[:-1]) >= gain]
    if len(histories) < 2 or len(rising) * 2 < len(histories):
        return None
    gap = ""
    if final is not None and final.teacher is not None:
        scratch = next((s for s in final.students if s.is_scratch and s.runs), None)
        if scratch is not None:
            mean = statistics.fmean(r.accuracy for r in scratch.runs)
            gap = f"; scratch reaches test accuracy {mean:.2f} against the teacher's {final.teacher.accuracy:.2f}"
    return (
        f"warning: the students were still learning when they stopped: {len(rising)} of {len(histories)} completed "
        f"trials raised their validation score by {gain * 100:g} pp or more in their last epoch{gap}. The comparison "
        "may not mean much yet: give them more steps (student.epochs), a higher student.lr, or a bigger student"
    )


# --------------------------------------------------------------------------- candidate students: the front (test)


@dataclass(frozen=True)
class FrontRow:
    """One candidate student of the test-split front: its cost, its distilled and scratch students' stats."""

    student: str
    cost: StudentCost | None
    distilled: StudentStats | None
    scratch: StudentStats | None

    def cost_of(self, field: str) -> float | None:
        value = self.cost.value(field) if self.cost is not None else None
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def front_rows(final: FinalComparison, stats: Sequence[StudentStats]) -> list[FrontRow]:
    """The final comparison's candidates (``final.front``, cheapest first on validation), each with its cost and
    its retrained distilled and scratch (cached teacher mode) students; [] for a study without candidates."""
    costs = final.costs.students if final.costs is not None else {}
    rows = []
    for name in final.front:
        mine = [s for s in stats if s.student == name]
        distilled = next((s for s in mine if s.method not in ("scratch", "pseudo_label", "untuned_kd")), None)
        scratch = next((s for s in mine if s.method == "scratch" and "augmented" not in s.label), None)
        rows.append(FrontRow(name, costs.get(name), distilled, scratch))
    return rows


def front_headline(final: FinalComparison, stats: Sequence[StudentStats]) -> str | None:
    """ "smallest student within X pp of the teacher's test accuracy: <name> (N× fewer parameters, M× lower ONNX
    latency)", smallest by ``final.front_cost``; the closest one when none is within; None without candidates."""
    rows = [r for r in front_rows(final, stats) if r.distilled is not None]
    if not rows or final.teacher is None:
        return None
    x, teacher = final.within_pp, final.teacher.accuracy
    gap = {r.student: (teacher - r.distilled.accuracy_mean) * 100 for r in rows}  # type: ignore[union-attr]
    within = [r for r in rows if gap[r.student] <= x]
    if not within:
        closest = min(rows, key=lambda r: gap[r.student])
        return (
            f"no candidate student is within {x:g} pp of the teacher's test accuracy (closest: {closest.student}, "
            f"{gap[closest.student]:.2f} pp below)"
        )
    inf = float("inf")
    best = min(within, key=lambda r: (r.cost_of(final.front_cost) or inf, r.cost_of("params") or inf))
    t = final.costs.teacher if final.costs is not None else None
    ratios = []
    for field, what in (("params", "fewer parameters"), ("onnx_latency_ms", "lower ONNX latency")):
        mine, theirs = best.cost_of(field), (t.value(field) if t is not None else None)
        if mine and theirs:
            ratios.append(f"{theirs / mine:.1f}× {what}")
    shown = f" ({', '.join(ratios)} than the teacher)" if ratios else ""
    if final.front_cost not in ("params", "onnx_latency_ms"):
        shown += f", smallest in {COST_LABELS[final.front_cost]}"
    return f"smallest student within {x:g} pp of the teacher's test accuracy: {best.student}{shown}"
