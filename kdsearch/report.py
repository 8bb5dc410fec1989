"""Figures and tables from a finished study (plotly): written as one self-contained HTML file.

Reads only storage: the trials, and the ``spec``, ``final_comparison`` and ``teacher`` study attrs.

The module is split in three layers, so every figure and table can be tested without a browser:

* **extraction** (needs the study): ``trial_points``, ``study_objective``;
* **pure builders** (plain data in, ``go.Figure`` / rows / HTML out): ``temperature_figure``,
  ``feature_weight_figure``, ``history_figure``, ``final_comparison_figure``, ``best_per_method``,
  ``final_stats`` and their table renderers;
* **assembly**: ``summary_rows`` / ``summary_text`` (terminal) and ``write_report`` (the page).

Every method gets the same colour in every figure and table (``method_colour``).
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .search import FINAL_ATTR, SPEC_ATTR, TEACHER_ATTR, params_of

METRIC_LABELS = {"accuracy": "accuracy", "auc": "AUC"}
METHOD_ORDER = ("kd", "lskd", "dkd", "cosine", "hint", "scratch")
METHOD_COLOURS = {
    "kd": "#1f77b4",
    "lskd": "#ff7f0e",
    "dkd": "#2ca02c",
    "cosine": "#9467bd",
    "hint": "#8c564b",
    "scratch": "#7f7f7f",
}
_EXTRA_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#393b79", "#637939", "#843c39")
TEACHER_COLOUR = "#d62728"
FIGURE_HEIGHT = 440
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


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

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    def metric(self, name: str) -> float | None:
        return {"accuracy": self.accuracy, "auc": self.auc}.get(name)


def trial_points(study: optuna.Study) -> list[TrialPoint]:
    """Every trial that has sampled a method, in trial-number order."""
    points = []
    for t in study.get_trials(deepcopy=False):
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
                value=t.value if complete else None,
                accuracy=t.user_attrs.get("accuracy"),
                auc=t.user_attrs.get("auc"),
            )
        )
    return sorted(points, key=lambda p: p.number)


def study_objective(study: optuna.Study) -> str | None:
    """The metric the study maximised (``accuracy`` or ``auc``), from the stored spec or final comparison."""
    spec = study.user_attrs.get(SPEC_ATTR) or {}
    objective = (spec.get("search") or {}).get("objective") if isinstance(spec, dict) else None
    if objective is None:
        objective = (study.user_attrs.get(FINAL_ATTR) or {}).get("objective")
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


# --------------------------------------------------------------------------- figures (pure)


def _style(fig: go.Figure, title: str, *, legend_below: bool = False) -> go.Figure:
    """The common look: white template, left title, horizontal legend under the title (or under the
    plot, ``legend_below``, where subplot titles take the band), tight margins."""
    if legend_below:
        legend = dict(orientation="h", x=0.5, xanchor="center", y=-0.13, yanchor="top", font=dict(size=12))
        margin = dict(l=64, r=24, t=70, b=80)
    else:
        legend = dict(orientation="h", x=0.0, xanchor="left", y=1.0, yanchor="bottom", font=dict(size=12))
        margin = dict(l=64, r=24, t=78, b=52)
    fig.update_layout(
        template="plotly_white",
        title=dict(
            text=title, x=0.0, xanchor="left", xref="paper", y=0.975, yanchor="top", yref="container", font=dict(size=17)
        ),
        margin=margin,
        legend=legend,
        hoverlabel=dict(align="left"),
        font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=13),
    )
    return fig


def log_ticks(values: Sequence[float]) -> list[float]:
    """1-2-5 tick values over the decades that hold ``values`` (plotly draws those inside the axis range),
    instead of plotly's cluttered minor-digit labels on log axes; [] for no positive values."""
    positive = [v for v in values if v > 0]
    if not positive:
        return []
    first, last = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    return [round(m * 10.0**e, 12) for e in range(first, last + 1) for m in (1, 2, 5)]


def _log_axis(fig: go.Figure, title: str, values: Sequence[float]) -> None:
    """A log x axis with 1-2-5 ticks and a little room either side of the points."""
    ticks = log_ticks(values)
    extra: dict = {}
    if ticks:
        lo, hi = math.log10(min(v for v in values if v > 0)), math.log10(max(v for v in values if v > 0))
        pad = max(0.1, (hi - lo) * 0.04)
        extra = dict(tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], range=[lo - pad, hi + pad])
    fig.update_xaxes(title_text=title, type="log", **extra)


def _hover(p: TrialPoint, lead: str) -> str:
    """Hover text of one trial: its own params only (no alpha for a method without one), both val metrics."""
    rest = format_params(p.params, skip=(lead,))
    lines = [f"<b>{html.escape(p.method)}</b> trial #{p.number}", f"{lead}={p.params[lead]:.3g}"]
    if rest:
        lines.append(html.escape(rest))
    lines.append(f"val accuracy={_fmt(p.accuracy)}")
    lines.append(f"val AUC={_fmt(p.auc)}")
    return "<br>".join(lines)


def temperature_figure(points: Sequence[TrialPoint], metric: str) -> go.Figure:
    """Validation ``metric`` vs T: every completed trial with a temperature, one colour (trace) per method.

    The method's other params (alpha for kd/lskd, alpha_tckd and beta for dkd) are in the hover text.
    Per method, a line through the best trial of each T bin when there are enough trials
    (``best_per_bin_line``).
    """
    fig = go.Figure()
    usable = [p for p in points if p.complete and "temperature" in p.params and p.metric(metric) is not None]
    for method, pts in _by_method(usable).items():
        colour = method_colour(method)
        fig.add_trace(
            go.Scatter(
                x=[p.params["temperature"] for p in pts],
                y=[p.metric(metric) for p in pts],
                mode="markers",
                name=method,
                legendgroup=method,
                marker=dict(color=colour, size=8, opacity=0.75, line=dict(width=0.5, color="white")),
                text=[_hover(p, "temperature") for p in pts],
                hovertemplate="%{text}<extra></extra>",
            )
        )
        line = best_per_bin_line([(p.params["temperature"], p.metric(metric), p.number) for p in pts])
        if line:
            fig.add_trace(
                go.Scatter(
                    x=[b.x for b in line],
                    y=[b.y for b in line],
                    mode="lines+markers",
                    name=f"{method}: best per T bin",
                    legendgroup=method,
                    line=dict(color=colour, width=2),
                    marker=dict(color=colour, size=13, symbol="circle-open", line=dict(width=2, color=colour)),
                    text=[
                        f"<b>{html.escape(method)}</b>: best of {b.count} trial{'s' if b.count > 1 else ''} "
                        f"with T in [{b.low:.3g}, {b.high:.3g}]<br>trial #{b.number}, T={b.x:.3g}"
                        for b in line
                    ],
                    hovertemplate="%{text}<br>val " + metric_label(metric) + "=%{y:.4f}<extra></extra>",
                )
            )
    label = metric_label(metric)
    _style(fig, f"Validation {label} vs temperature")
    _log_axis(fig, "temperature T (log scale)", [p.params["temperature"] for p in usable])
    fig.update_yaxes(title_text=f"validation {label}")
    return fig


def feature_weight_figure(points: Sequence[TrialPoint], metric: str) -> go.Figure | None:
    """Validation ``metric`` vs feature weight for methods without a temperature (cosine, hint).

    One colour per method; the best temperature-based trial (kd family) is a dotted reference line
    with a legend entry.
    None when no such trial has completed.
    """
    usable = [
        p
        for p in points
        if p.complete
        and "feature_weight" in p.params
        and "temperature" not in p.params
        and p.metric(metric) is not None
    ]
    if not usable:
        return None
    fig = go.Figure()
    grouped = _by_method(usable)
    for method, pts in grouped.items():
        fig.add_trace(
            go.Scatter(
                x=[p.params["feature_weight"] for p in pts],
                y=[p.metric(metric) for p in pts],
                mode="markers",
                name=method,
                marker=dict(color=method_colour(method), size=8, opacity=0.8, line=dict(width=0.5, color="white")),
                text=[_hover(p, "feature_weight") for p in pts],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    label = metric_label(metric)
    reference = [p for p in points if p.complete and "temperature" in p.params and p.metric(metric) is not None]
    if reference:
        best = max(reference, key=lambda p: p.metric(metric))
        fig.add_hline(
            y=best.metric(metric),
            line=dict(color=method_colour(best.method), dash="dot", width=2),
            showlegend=True,
            name=f"best with temperature: {best.method} #{best.number} ({best.metric(metric):.4f})",
        )
        ys = [p.metric(metric) for p in usable] + [best.metric(metric)]
        pad = max(0.002, (max(ys) - min(ys)) * 0.08)
        fig.update_yaxes(range=[min(ys) - pad, max(ys) + pad])
    _style(fig, f"Validation {label} vs feature weight ({', '.join(grouped)})")
    _log_axis(fig, "feature_weight (log scale)", [p.params["feature_weight"] for p in usable])
    fig.update_yaxes(title_text=f"validation {label}")
    return fig


def history_figure(points: Sequence[TrialPoint], objective: str | None) -> go.Figure:
    """The objective of every completed trial by trial number (one colour per method) and the best so far."""
    label = f"validation {metric_label(objective)}"
    done = [p for p in points if p.complete and p.value is not None]
    fig = go.Figure()
    for method, pts in _by_method(done).items():
        fig.add_trace(
            go.Scatter(
                x=[p.number for p in pts],
                y=[p.value for p in pts],
                mode="markers",
                name=method,
                marker=dict(color=method_colour(method), size=8, opacity=0.8, line=dict(width=0.5, color="white")),
                text=[
                    f"<b>{html.escape(p.method)}</b> trial #{p.number}<br>{html.escape(format_params(p.params))}"
                    for p in pts
                ],
                hovertemplate="%{text}<br>" + label + "=%{y:.4f}<extra></extra>",
            )
        )
    if done:
        best_x, best_y, best = [], [], -math.inf
        for p in sorted(done, key=lambda p: p.number):
            best = max(best, p.value)
            best_x.append(p.number)
            best_y.append(best)
        fig.add_trace(
            go.Scatter(
                x=best_x,
                y=best_y,
                mode="lines",
                name="best so far",
                line=dict(color="#444", width=1.5, shape="hv"),
                hovertemplate="best so far after trial #%{x}: %{y:.4f}<extra></extra>",
            )
        )
    _style(fig, f"Optimization history: {label}")
    last = max((p.number for p in points), default=0)
    xaxis: dict = dict(title_text="trial number", tickformat="d")
    if last <= 20:
        xaxis.update(tickmode="linear", tick0=0, dtick=1)
    fig.update_xaxes(**xaxis)
    fig.update_yaxes(title_text=label)
    return fig


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


def best_per_method(points: Sequence[TrialPoint]) -> list[MethodBest]:
    """The best completed trial of each method (by the objective, as the final comparison picks it).

    Sorted best first; methods with no completed trial come last.
    """
    rows = []
    for method, pts in _by_method(points).items():
        done = [p for p in pts if p.complete and p.value is not None]
        best = max(done, key=lambda p: p.value, default=None)
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


def _swatch(method: str) -> str:
    return f'<span class="sw" style="background:{method_colour(method)}"></span>{html.escape(method)}'


def best_per_method_table(rows: Sequence[MethodBest], objective: str | None) -> str:
    """HTML table ``#best-per-method`` of ``best_per_method`` rows; the objective's column is marked."""
    heads = {"accuracy": "val accuracy", "auc": "val AUC"}
    if objective in heads:
        heads[objective] += " ★"
    head = (
        "<tr><th>method</th><th>best trial</th><th>params</th>"
        f"<th class=num>{heads['accuracy']}</th><th class=num>{heads['auc']}</th>"
        "<th class=num>complete</th><th class=num>pruned</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_swatch(r.method)}</td><td>{'—' if r.trial is None else f'#{r.trial}'}</td>"
        f"<td>{html.escape(format_params(r.params)) or '—'}</td>"
        f"<td class=num>{_fmt(r.accuracy)}</td><td class=num>{_fmt(r.auc)}</td>"
        f"<td class=num>{r.complete}</td><td class=num>{r.pruned}</td></tr>"
        for r in rows
    )
    return f'<table id="best-per-method" class="data">{head}{body}</table>'


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

    @property
    def n(self) -> int:
        return len(self.seeds)

    def values(self, metric: str) -> tuple[float, ...]:
        return self.accuracy if metric == "accuracy" else self.auc

    def mean_std(self, metric: str) -> tuple[float, float]:
        return (self.accuracy_mean, self.accuracy_std) if metric == "accuracy" else (self.auc_mean, self.auc_std)


def _is_scratch(student: Mapping) -> bool:
    return student.get("method") == "scratch" or student.get("label") == "scratch"


def final_stats(final: Mapping) -> list[StudentStats]:
    """Mean ± sample std per student and each distilled student's difference to scratch in percentage points
    (against the scratch student of the same teacher mode).

    Students are ordered like the methods everywhere else (kd, lskd, dkd, cosine, hint, …, scratch last).
    """
    # each distilled student against the scratch student trained with the same teacher mode
    # (a 'consistent' winner saw augmented batches, so its baseline is the augmented scratch)
    bases: dict[str, dict[str, float]] = {}
    for student in final["students"]:
        if _is_scratch(student) and student["runs"]:
            mode = student.get("teacher_mode", "cached")
            bases.setdefault(mode, {m: statistics.fmean(r[m] for r in student["runs"]) for m in ("accuracy", "auc")})
    out = []
    for s in final["students"]:
        if not s["runs"]:
            continue
        acc = tuple(r["accuracy"] for r in s["runs"])
        roc = tuple(r["auc"] for r in s["runs"])
        (am, asd), (um, usd) = mean_std(acc), mean_std(roc)
        base = bases.get(s.get("teacher_mode", "cached"), bases.get("cached"))
        vs = base is not None and not _is_scratch(s)
        out.append(
            StudentStats(
                label=s["label"],
                method=s.get("method", s["label"]),
                params=dict(s.get("params") or {}),
                trial=s.get("trial"),
                seeds=tuple(r.get("seed") for r in s["runs"]),
                accuracy=acc,
                auc=roc,
                accuracy_mean=am,
                accuracy_std=asd,
                auc_mean=um,
                auc_std=usd,
                accuracy_vs_scratch_pp=(am - base["accuracy"]) * 100 if vs else None,
                auc_vs_scratch_pp=(um - base["auc"]) * 100 if vs else None,
            )
        )
    return sorted(out, key=lambda s: method_sort_key(s.method))


def final_comparison_figure(final: Mapping) -> go.Figure:
    """Test accuracy and AUC per student: mean ± std (point with error bars), each seed a dot beside it,
    the teacher a dashed line (legend entry ``teacher (test)``). No bars, so no truncated baseline."""
    stats = final_stats(final)
    teacher = final.get("teacher") or {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test accuracy", "test AUC"), horizontal_spacing=0.09)
    xs = list(range(len(stats)))
    for col, metric in enumerate(("accuracy", "auc"), start=1):
        shown: list[float] = []
        for i, s in enumerate(stats):
            colour = method_colour(s.method)
            mean, sd = s.mean_std(metric)
            fig.add_trace(
                go.Scatter(
                    x=[i - 0.1],
                    y=[mean],
                    mode="markers",
                    name=f"{s.label}: mean ± std",
                    legendgroup="mean",
                    showlegend=False,
                    marker=dict(color=colour, size=13, symbol="diamond", line=dict(width=1, color="white")),
                    error_y=dict(type="data", array=[sd], color=colour, thickness=2, width=7),
                    hovertemplate=(
                        f"<b>{html.escape(s.label)}</b><br>test {metric_label(metric)} "
                        f"{mean:.4f} ± {sd:.4f} ({s.n} seed{'s' if s.n != 1 else ''})<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
            values = s.values(metric)
            spread = [0.1 + 0.05 * (k - (len(values) - 1) / 2) for k in range(len(values))]
            fig.add_trace(
                go.Scatter(
                    x=[i + 0.12 + d for d in spread],
                    y=list(values),
                    mode="markers",
                    name=f"{s.label}: seeds",
                    legendgroup="seed",
                    showlegend=False,
                    marker=dict(color=colour, size=7, symbol="circle-open", line=dict(width=1.8, color=colour)),
                    text=[f"<b>{html.escape(s.label)}</b>, seed {seed}" for seed in s.seeds],
                    hovertemplate="%{text}: %{y:.4f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            shown += [*values, mean - sd, mean + sd]
        if metric in teacher:
            fig.add_hline(
                y=teacher[metric],
                line=dict(color=TEACHER_COLOUR, dash="dash", width=2),
                row=1,
                col=col,
                showlegend=col == 1,
                name="teacher (test)",
                legendgroup="teacher",
            )
            shown.append(teacher[metric])
        if shown:
            lo, hi = min(shown), max(shown)
            pad = max(0.004, (hi - lo) * 0.12)
            fig.update_yaxes(range=[lo - pad, min(hi + pad, 1.0 + pad / 4)], row=1, col=col)
        fig.update_yaxes(title_text=f"test {metric_label(metric)}", tickformat=".3f", row=1, col=col)
        fig.update_xaxes(
            tickmode="array", tickvals=xs, ticktext=[s.label for s in stats], range=[-0.6, len(stats) - 0.35],
            zeroline=False, showgrid=False, row=1, col=col,
        )  # fmt: skip
    n = len(final.get("seeds") or []) or max((s.n for s in stats), default=0)
    # Legend-only keys for the two marker kinds (the real traces are coloured per method).
    fig.add_trace(
        go.Scatter(
            x=[None], y=[None], mode="markers", name=f"mean ± std ({n} seeds)",
            marker=dict(color="#555", size=12, symbol="diamond"), hoverinfo="skip",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[None], y=[None], mode="markers", name="one seed",
            marker=dict(color="#555", size=7, symbol="circle-open", line=dict(width=1.8, color="#555")),
            hoverinfo="skip",
        )
    )  # fmt: skip
    _style(fig, "Best distilled student per method vs scratch, held-out test split", legend_below=True)
    fig.update_annotations(font=dict(size=14), yshift=4)  # the subplot titles
    return fig


def final_table(final: Mapping) -> str:
    """HTML table ``#final-comparison`` with the figure's numbers: mean ± std, n seeds, Δ vs scratch (pp)."""
    stats = final_stats(final)
    head = (
        "<tr><th>student</th><th>trial</th><th>params</th><th class=num>test accuracy</th>"
        "<th class=num>Δ vs scratch</th><th class=num>test AUC</th><th class=num>Δ vs scratch</th>"
        "<th class=num>seeds</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_swatch_label(s)}</td>"
        f"<td>{'—' if s.trial is None else f'#{s.trial}'}</td>"
        f"<td>{html.escape(format_params(s.params)) or '—'}</td>"
        f"<td class=num>{s.accuracy_mean:.4f} ± {s.accuracy_std:.4f}</td>"
        f"<td class=num>{_pp(s.accuracy_vs_scratch_pp)}</td>"
        f"<td class=num>{s.auc_mean:.4f} ± {s.auc_std:.4f}</td><td class=num>{_pp(s.auc_vs_scratch_pp)}</td>"
        f"<td class=num>{s.n}</td></tr>"
        for s in stats
    )
    teacher = final.get("teacher") or {}
    if teacher:
        body += (
            f'<tr class="ref"><td><span class="sw dash"></span>teacher</td><td>—</td><td>—</td>'
            f"<td class=num>{_fmt(teacher.get('accuracy'))}</td><td class=num></td>"
            f"<td class=num>{_fmt(teacher.get('auc'))}</td><td class=num></td><td class=num>—</td></tr>"
        )
    return f'<table id="final-comparison" class="data">{head}{body}</table>'


COST_COLUMNS = (
    ("params", "parameters", "{:,.0f}"),
    ("size_mb", "size (MB)", "{:.2f}"),
    ("flops", "FLOPs / image", "{:,.0f}"),
    ("latency_ms", "CPU latency (ms, batch 1)", "{:.2f}"),
    ("throughput", "CPU throughput (img/s, batch 64)", "{:,.0f}"),
)


def cost_lines(final: Mapping) -> list[tuple[str, str]]:
    """(model, 'params …, size …, …') for the teacher and the student architecture, if measured."""
    return [
        (name, ", ".join(f"{label} {fmt.format(row[key])}" for key, label, fmt in COST_COLUMNS))
        for name, row in (final.get("cost") or {}).items()
    ]


def cost_table(final: Mapping) -> str:
    """HTML table ``#cost``: parameters, size, FLOPs, latency and throughput of teacher and student."""
    cost = final.get("cost") or {}
    if not cost:
        return ""
    head = "<tr><th>model</th>" + "".join(f"<th class=num>{label}</th>" for _, label, _ in COST_COLUMNS) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td class=num>{fmt.format(row[key])}</td>" for key, _, fmt in COST_COLUMNS)
        + "</tr>"
        for name, row in cost.items()
    )
    return (
        '<p class="caption">Cost of inference. Scratch and distilled students share the student architecture '
        "(a hint regressor is training-only and not counted); size is the saved state_dict.</p>"
        f'<table id="cost" class="data">{head}{body}</table>'
    )


def _swatch_label(s: StudentStats) -> str:
    return f'<span class="sw" style="background:{method_colour(s.method)}"></span>{html.escape(s.label)}'


# --------------------------------------------------------------------------- summary and page


def summary_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """(label, value) rows that summarise the study for the terminal and the report."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    rows = [("study", study.study_name), ("trials", states or "none")]
    objective = study_objective(study)
    if objective:
        rows.append(("objective", f"validation {metric_label(objective)} (maximized)"))
    teacher = study.user_attrs.get(TEACHER_ATTR)
    if teacher:
        rows.append(("teacher (val)", f"accuracy {teacher['val_accuracy']:.4f}, AUC {teacher['val_auc']:.4f}"))
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        best = study.best_trial
        method, params = params_of(best) if "method" in best.params else ("?", {})
        shown = format_params(params)
        what = f"#{best.number} {method}{' ' + shown if shown else ''}"
        rows.append(("best trial (val)", f"{what}: val {metric_label(objective)} {best.value:.4f}"))
    final = study.user_attrs.get(FINAL_ATTR)
    if final:
        n = len(final["seeds"])
        t = final["teacher"]
        rows.append(("teacher (test)", f"accuracy {t['accuracy']:.4f}, AUC {t['auc']:.4f}"))
        for s in final_stats(final):
            text = f"accuracy {s.accuracy_mean:.4f} ± {s.accuracy_std:.4f}, AUC {s.auc_mean:.4f} ± {s.auc_std:.4f}"
            if s.accuracy_vs_scratch_pp is not None:
                text += f" (vs scratch: accuracy {_pp(s.accuracy_vs_scratch_pp)}, AUC {_pp(s.auc_vs_scratch_pp)})"
            rows.append((f"{s.label} (test, {n} seeds)", text))
        rows += [(f"cost: {name}", text) for name, text in cost_lines(final)]
        for method, e in sorted((final.get("exports") or {}).items(), key=lambda kv: method_sort_key(kv[0])):
            folder = Path(e.get("base", ".")) / e["folder"]
            rows.append((f"student {method} (files)", f"{folder}  (seed {e.get('seed')}: safetensors, TorchScript, ONNX, card)"))
    return rows


def summary_text(study: optuna.Study) -> str:
    rows = summary_rows(study)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;line-height:1.4;
  margin:0 auto;padding:12px 20px 32px;max-width:1180px}
h1{font-size:1.45em;margin:.3em 0 .4em}
h2{font-size:1.15em;margin:1.6em 0 .5em;padding-bottom:.2em;border-bottom:2px solid #e8e8ee}
table{border-collapse:collapse;margin:.3em 0 .8em;font-size:.9em}
td,th{border-bottom:1px solid #e4e4ea;padding:4px 12px 4px 0;text-align:left;vertical-align:top}
#summary th{white-space:nowrap;color:#444}
table.data th{background:#f6f6f9;padding:5px 12px 5px 6px;white-space:nowrap}
table.data td{padding-left:6px}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.ref td{color:#666}
.sw{display:inline-block;width:.75em;height:.75em;border-radius:2px;margin-right:.45em;vertical-align:-.05em}
.sw.dash{height:0;border-top:2px dashed #d62728;border-radius:0;vertical-align:.25em}
.note{color:#444;background:#f6f7fa;border-left:3px solid #9aa3b8;padding:.55em .9em;margin:.6em 0 1em;font-size:.93em}
.caption{color:#555;font-size:.88em;margin:.1em 0 .4em}
section.figure{margin:.4em 0 .6em}
"""


EXPORT_KINDS = (("onnx", "ONNX"), ("torchscript", "TorchScript"), ("safetensors", "safetensors"), ("card", "card"))


def students_table(exports: Mapping[str, Mapping], report_dir: Path) -> str:
    """The exported distilled students (one row per method) with links to their files, relative to the report."""
    import os

    rows = []
    for method in sorted(exports, key=method_sort_key):
        e = exports[method]
        links = []
        for kind, label in EXPORT_KINDS:
            if kind in e.get("files", {}):
                target = Path(e.get("base", report_dir)) / e["files"][kind]
                href = os.path.relpath(target, report_dir)
                size = e.get("sizes", {}).get(kind)
                shown = f"{label} ({size / 1e6:.2f} MB)" if size is not None and kind != "card" else label
                links.append(f'<a href="{html.escape(href)}">{html.escape(shown)}</a>')
        test = e.get("test") or {}
        diff = e.get("onnx_max_abs_diff")
        rows.append(
            f'<tr><td><span class="sw" style="background:{method_colour(method)}"></span>{html.escape(method)}</td>'
            f'<td class="num">{e.get("seed")}</td><td class="num">{test.get("accuracy", float("nan")):.4f}</td>'
            f'<td class="num">{test.get("auc", float("nan")):.4f}</td>'
            f'<td class="num">{"" if diff is None else f"{diff:.1e}"}</td><td>{" · ".join(links)}</td></tr>'
        )
    return (
        '<h2 id="students">Distilled students (files)</h2><p class="caption">For the best trial of each method, the '
        "retrained student whose test score is closest to the mean over seeds, ready to ship; every seed's weights "
        "are kept beside it in seeds/. The ONNX file was checked against PyTorch with onnxruntime (max |Δ| of the "
        "logits). <code>kdsearch export --epochs N</code> retrains one for longer.</p>"
        '<table class="data"><tr><th>method</th><th>seed</th><th>test accuracy</th><th>test AUC</th>'
        f"<th>ONNX max |Δ|</th><th>files</th></tr>{''.join(rows)}</table>"
    )


def write_report(study: optuna.Study, path: Path) -> Path:
    """Write the study's report as one HTML file with plotly's JS embedded (works offline).

    Validation section: best-per-method table, metric vs temperature (AUC, accuracy), metric vs
    feature weight (only with cosine/hint trials), optimization history. Test section: the final
    comparison figure and table. Figures are ``div#figure-N`` in page order.
    """
    points = trial_points(study)
    objective = study_objective(study)
    shown_metric = objective or "accuracy"
    final = study.user_attrs.get(FINAL_ATTR)
    has_temperature = any(p.complete and "temperature" in p.params for p in points)

    blocks: list[str | go.Figure] = ["<h2>Search (validation split)</h2>"]  # page order
    if any(p.complete for p in points):
        blocks.append(
            '<p class="caption">Best completed trial of each method by the objective'
            f" (★: validation {metric_label(objective)}); these are the trials the final comparison retrains.</p>"
        )
        blocks.append(best_per_method_table(best_per_method(points), objective))
    else:
        blocks.append('<p class="caption">No completed trial yet.</p>')
    if has_temperature:
        blocks += [temperature_figure(points, "auc"), temperature_figure(points, "accuracy")]
    fw = feature_weight_figure(points, shown_metric)
    if fw is not None:
        blocks.append(fw)
    if any(p.complete for p in points):
        blocks.append(history_figure(points, objective))
    if final:
        blocks += [
            "<h2>Final comparison (test split)</h2>",
            final_comparison_figure(final),
            '<p class="caption">Mean ± sample standard deviation over seeds; Δ is the difference of the means '
            "to the scratch student in percentage points.</p>",
            final_table(final),
            cost_table(final),
        ]
        if final.get("exports"):
            blocks.append(students_table(final["exports"], path.parent))

    html_parts, n_fig = [], 0
    for block in blocks:
        if isinstance(block, go.Figure):
            div = block.to_html(
                full_html=False,
                include_plotlyjs=(n_fig == 0),
                default_height=FIGURE_HEIGHT,
                div_id=f"figure-{n_fig}",
                config=PLOTLY_CONFIG,
            )
            html_parts.append(f'<section class="figure">{div}</section>')
            n_fig += 1
        else:
            html_parts.append(block)
    body = "\n".join(html_parts)
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(study))
    note = (
        '<p class="note">Trials are tuned on the <b>validation</b> split. The final comparison retrains the best '
        "trial of each method and a scratch student (cross-entropy on the labeled images only, same optimizer "
        "steps) with several seeds and scores them once on the held-out <b>test</b> split.</p>"
    )
    name = html.escape(study.study_name)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kdsearch report: {name}</title>
<style>{_CSS}</style></head>
<body><h1>kdsearch report: {name}</h1>
<table id="summary">{table}</table>{note}
{body}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
