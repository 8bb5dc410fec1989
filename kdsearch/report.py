"""Figures and tables from a finished study (plotly): written as one self-contained HTML file.

Reads only storage: the trials, and the ``final_comparison`` and ``teacher`` study attrs.
"""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .search import FINAL_ATTR, TEACHER_ATTR, params_of

METRIC_LABELS = {"accuracy": "accuracy", "auc": "AUC"}


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def best_per_bin(points: list[tuple[float, float]], bins: int = 8) -> list[tuple[float, float]]:
    """Max y in each of ``bins`` log-spaced x bins, at the bin's geometric centre (empty bins left out)."""
    if not points:
        return []
    lo, hi = min(x for x, _ in points), max(x for x, _ in points)
    if lo == hi:
        return [(lo, max(y for _, y in points))]
    edges = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / bins) for i in range(bins + 1)]
    best: dict[int, float] = {}
    for x, y in points:
        i = min(bins - 1, int(bins * (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))))
        best[i] = max(best.get(i, -math.inf), y)
    return [(math.sqrt(edges[i] * edges[i + 1]), y) for i, y in sorted(best.items())]


def metric_vs_temperature(study: optuna.Study, metric: str) -> go.Figure:
    """Every completed trial with a temperature as a point (colour: alpha), plus the best per T bin."""
    fig = go.Figure()
    by_method: dict[str, list[tuple[float, float, float | None, int]]] = {}
    for t in completed_trials(study):
        method, params = params_of(t)
        if "temperature" in params and metric in t.user_attrs:
            by_method.setdefault(method, []).append((params["temperature"], t.user_attrs[metric], params.get("alpha"), t.number))
    for i, (method, rows) in enumerate(sorted(by_method.items())):
        alphas = [a if a is not None else 0.5 for _, _, a, _ in rows]
        fig.add_trace(
            go.Scatter(
                x=[r[0] for r in rows],
                y=[r[1] for r in rows],
                mode="markers",
                name=f"{method} trials",
                text=[f"trial {r[3]}" for r in rows],
                marker=dict(
                    color=alphas, colorscale="Viridis", cmin=0, cmax=1, size=9,
                    symbol=["circle", "diamond", "square", "triangle-up", "cross"][i % 5],
                    colorbar=dict(title="alpha") if i == 0 else None, showscale=i == 0,
                ),
                hovertemplate="T=%{x:.3g}<br>" + METRIC_LABELS[metric] + "=%{y:.4f}<br>alpha=%{marker.color:.2f}<br>%{text}<extra></extra>",
            )
        )  # fmt: skip
        binned = best_per_bin([(r[0], r[1]) for r in rows])
        fig.add_trace(
            go.Scatter(x=[b[0] for b in binned], y=[b[1] for b in binned], mode="lines+markers", name=f"{method}: best per T bin")
        )
    fig.update_layout(
        title=f"Validation {METRIC_LABELS[metric]} vs temperature",
        xaxis=dict(title="temperature T (log scale)", type="log"),
        yaxis=dict(title=f"validation {METRIC_LABELS[metric]}"),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def final_comparison_figure(final: dict) -> go.Figure:
    """Test accuracy and AUC of each retrained student: mean ± std over seeds, each seed as a dot, teacher dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test accuracy", "test AUC"))
    labels = [s["label"] for s in final["students"]]
    for col, metric in enumerate(("accuracy", "auc"), start=1):
        stats = [mean_std([r[metric] for r in s["runs"]]) for s in final["students"]]
        fig.add_trace(
            go.Bar(
                x=labels, y=[m for m, _ in stats], error_y=dict(type="data", array=[sd for _, sd in stats]),
                name=f"mean ± std ({len(final['seeds'])} seeds)", marker_color="#6baed6", showlegend=col == 1,
                hovertemplate="%{x}: %{y:.4f}<extra></extra>",
            ),
            row=1, col=col,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[s["label"] for s in final["students"] for _ in s["runs"]],
                y=[r[metric] for s in final["students"] for r in s["runs"]],
                text=[f"seed {r['seed']}" for s in final["students"] for r in s["runs"]],
                mode="markers", name="one seed", marker=dict(color="#08306b", size=8), showlegend=col == 1,
                hovertemplate="%{text}: %{y:.4f}<extra></extra>",
            ),
            row=1, col=col,
        )  # fmt: skip
        fig.add_hline(y=final["teacher"][metric], line_dash="dash", line_color="#d62728", row=1, col=col,
                      annotation_text="teacher", annotation_position="bottom right")  # fmt: skip
        lows = [r[metric] for s in final["students"] for r in s["runs"]] + [final["teacher"][metric]]
        pad = max(0.01, (max(lows) - min(lows)) * 0.5)
        fig.update_yaxes(range=[min(lows) - pad, min(1.0, max(lows) + pad)], row=1, col=col)
    fig.update_layout(title="Best distilled student vs scratch on the held-out test split", barmode="overlay")
    return fig


def history_figure(study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study)
    fig.update_layout(title="Optimization history (validation objective)")
    return fig


def summary_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """(label, value) rows that summarise the study for the terminal and the report."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    rows = [("study", study.study_name), ("trials", ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))]
    teacher = study.user_attrs.get(TEACHER_ATTR)
    if teacher:
        rows.append(("teacher (val)", f"accuracy {teacher['val_accuracy']:.4f}, AUC {teacher['val_auc']:.4f}"))
    complete = completed_trials(study)
    if complete:
        best = study.best_trial
        method, params = params_of(best)
        shown = ", ".join(f"{k}={v:.3g}" for k, v in params.items())
        rows.append(("best trial (val)", f"#{best.number} {method} {shown}: objective {best.value:.4f}"))
    final = study.user_attrs.get(FINAL_ATTR)
    if final:
        n = len(final["seeds"])
        rows.append(("teacher (test)", f"accuracy {final['teacher']['accuracy']:.4f}, AUC {final['teacher']['auc']:.4f}"))
        for s in final["students"]:
            acc = mean_std([r["accuracy"] for r in s["runs"]])
            roc = mean_std([r["auc"] for r in s["runs"]])
            rows.append(
                (f"{s['label']} (test, {n} seeds)", f"accuracy {acc[0]:.4f} ± {acc[1]:.4f}, AUC {roc[0]:.4f} ± {roc[1]:.4f}")
            )
    return rows


def summary_text(study: optuna.Study) -> str:
    rows = summary_rows(study)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def write_report(study: optuna.Study, path: Path) -> Path:
    """Write the study's report as one HTML file with plotly's JS embedded (works offline)."""
    figures = [metric_vs_temperature(study, "auc"), metric_vs_temperature(study, "accuracy")]
    final = study.user_attrs.get(FINAL_ATTR)
    if final:
        figures.append(final_comparison_figure(final))
    if completed_trials(study):
        figures.append(history_figure(study))
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_height=480, div_id=f"figure-{i}")
        for i, fig in enumerate(figures)
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(study))
    note = (
        "<p>Trials are tuned on the validation split. The comparison below retrains the best trial of each "
        "method and a scratch student (cross-entropy on the labeled images only, same optimizer steps) "
        "with several seeds and scores them once on the held-out test split.</p>"
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>kdsearch report: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}th{{text-align:left;padding-right:1em}}
td,th{{border-bottom:1px solid #ddd;padding:4px}}</style></head>
<body><h1>kdsearch report: {html.escape(study.study_name)}</h1>
<table id="summary">{table}</table>{note}
{''.join(f'<section class="figure">{p}</section>' for p in parts)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
