"""The report's plotly figures, built from plain data (``content.py``): pure functions, testable
without a browser. Every method has the same colour in every figure (``method_colour``).
"""

from __future__ import annotations

import html
import itertools
import math
from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..search.results import COST_FIELDS, COST_LABELS, FinalComparison, StudentCosts
from .content import (
    TEACHER_COLOUR,
    StudentStats,
    TrialPoint,
    _by_method,
    _fmt,
    best_per_bin_line,
    final_stats,
    format_params,
    front_rows,
    method_colour,
    metric_label,
)

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
            text=title,
            x=0.0,
            xanchor="left",
            xref="paper",
            y=0.975,
            yanchor="top",
            yref="container",
            font=dict(size=17),
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


def _temperature_markers(
    pts: Sequence[TrialPoint], metric: str, name: str, method: str, marker: dict, note=lambda p: ""
) -> go.Scatter:
    """One marker per trial at (T, validation ``metric``), hover: the trial's params and metrics (+ ``note(p)``)."""
    return go.Scatter(
        x=[p.params["temperature"] for p in pts],
        y=[p.metric(metric) for p in pts],
        mode="markers",
        name=name,
        legendgroup=method,
        marker=marker,
        text=[_hover(p, "temperature") + note(p) for p in pts],
        hovertemplate="%{text}<extra></extra>",
    )


def temperature_figure(points: Sequence[TrialPoint], metric: str) -> go.Figure:
    """Validation ``metric`` vs T: every completed trial with a temperature, one colour (trace) per method;
    each pruned trial at its last reported value (an x, lighter), in a trace of its own per method.

    The method's other params (alpha for kd/lskd, alpha_tckd and beta for dkd) are in the hover text.
    Per method, a line through the best completed trial of each T bin when there are enough trials
    (``best_per_bin_line``); its hover counts the bin's completed and pruned trials.
    """
    fig = go.Figure()
    usable = [p for p in points if p.complete and "temperature" in p.params and p.metric(metric) is not None]
    pruned = [p for p in points if p.state == "PRUNED" and "temperature" in p.params and p.metric(metric) is not None]
    pruned_by_method = _by_method(pruned)
    for method in _by_method(usable + pruned):
        colour = method_colour(method)
        pts = [p for p in usable if p.method == method]
        if pts:
            marker = dict(color=colour, size=8, opacity=0.75, line=dict(width=0.5, color="white"))
            fig.add_trace(_temperature_markers(pts, metric, method, method, marker))
        cut = pruned_by_method.get(method, [])
        if cut:
            marker = dict(color=colour, size=7, opacity=0.45, symbol="x-thin", line=dict(width=1.5, color=colour))
            fig.add_trace(
                _temperature_markers(
                    cut,
                    metric,
                    f"{method}: pruned (last epoch run)",
                    method,
                    marker,
                    note=lambda p: f"<br><i>pruned after epoch {p.epochs or '?'}</i>",
                )
            )
        line = best_per_bin_line([(p.params["temperature"], p.metric(metric), p.number) for p in pts])
        if line:

            def pruned_in(b, cut: Sequence[TrialPoint] = cut, top: float = line[-1].high) -> int:
                # half-open bins as in best_per_bin, the top one closed: a trial on an edge counts once
                ts = [p.params["temperature"] for p in cut]
                return sum(b.low <= t < b.high or t == b.high == top for t in ts)

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
                        f"<b>{html.escape(method)}</b>: best of {b.count} completed trial{'s' if b.count > 1 else ''} "
                        f"with T in [{b.low:.3g}, {b.high:.3g}] ({pruned_in(b)} pruned there)<br>"
                        f"trial #{b.number}, T={b.x:.3g}"
                        for b in line
                    ],
                    hovertemplate="%{text}<br>val " + metric_label(metric) + "=%{y:.4f}<extra></extra>",
                )
            )
    label = metric_label(metric)
    _style(fig, f"Validation {label} vs temperature")
    _log_axis(fig, "temperature T (log scale)", [p.params["temperature"] for p in usable + pruned])
    fig.update_yaxes(title_text=f"validation {label}")
    return fig


# the second axis of each logit method's map, and whether it is log-scaled
MAP_PARAMS = {"kd": ("alpha", False), "lskd": ("alpha", True), "dkd": ("beta", True)}
MIN_MAP_TRIALS = 4


def _edges(values: Sequence[float], bins: int, log: bool) -> list[float]:
    """``bins + 1`` equal-width edges over the values (in log10 units when ``log``)."""
    lo, hi = min(values), max(values)
    if hi == lo:
        hi = lo + (1.0 if not log else 0.5)
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


def _log10_axis(title: str, values: Sequence[float], edges: Sequence[float]) -> dict:
    """Axis settings for data drawn in log10 units: 1-2-5 ticks labelled with the values themselves."""
    ticks = log_ticks(values)
    return dict(
        title_text=f"{title} (log scale)",
        tickmode="array",
        tickvals=[math.log10(t) for t in ticks],
        ticktext=[f"{t:g}" for t in ticks],
        range=[edges[0], edges[-1]],
    )


def param_map_figure(points: Sequence[TrialPoint], metric: str) -> go.Figure | None:
    """Per logit method (kd, lskd: T × alpha; dkd: T × beta), a heatmap of the best completed trial's
    validation ``metric`` in each cell of a binned, log-T grid, with every completed trial drawn on top.
    One subplot per method with at least ``MIN_MAP_TRIALS`` completed trials; None when none has."""
    methods = [
        m
        for m, (param, _) in MAP_PARAMS.items()
        if sum(p.complete and p.method == m and param in p.params and p.metric(metric) is not None for p in points)
        >= MIN_MAP_TRIALS
    ]
    if not methods:
        return None
    fig = make_subplots(
        rows=1,
        cols=len(methods),
        subplot_titles=[f"{m}: T × {MAP_PARAMS[m][0]}" for m in methods],
        horizontal_spacing=0.08,
    )
    label = metric_label(metric)
    for col, method in enumerate(methods, start=1):
        param, log_param = MAP_PARAMS[method]
        pts = [
            p
            for p in points
            if p.complete and p.method == method and param in p.params and p.metric(metric) is not None
        ]
        xs = [math.log10(p.params["temperature"]) for p in pts]
        ys = [math.log10(p.params[param]) if log_param else p.params[param] for p in pts]
        bins = 5 if len(pts) >= 15 else 3
        xe, ye = _edges(xs, bins, True), _edges(ys, bins, log_param)
        z: list[list[float | None]] = [[None] * bins for _ in range(bins)]
        for x, y, p in zip(xs, ys, pts):
            i = min(bins - 1, int((y - ye[0]) / (ye[-1] - ye[0]) * bins))
            j = min(bins - 1, int((x - xe[0]) / (xe[-1] - xe[0]) * bins))
            z[i][j] = max(z[i][j] if z[i][j] is not None else -math.inf, p.metric(metric))
        fig.add_trace(
            go.Heatmap(
                x=[(a + b) / 2 for a, b in zip(xe, xe[1:])],
                y=[(a + b) / 2 for a, b in zip(ye, ye[1:])],
                z=z,
                colorscale="Viridis",
                coloraxis="coloraxis",
                hovertemplate=f"best val {label} in this cell: " + "%{z:.4f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=method,
                showlegend=False,
                marker=dict(color="white", size=7, line=dict(width=1.5, color=method_colour(method))),
                text=[_hover(p, "temperature") for p in pts],
                hovertemplate="%{text}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(**_log10_axis("T", [p.params["temperature"] for p in pts], xe), row=1, col=col)
        if log_param:
            fig.update_yaxes(**_log10_axis(param, [p.params[param] for p in pts], ye), row=1, col=col)
        else:
            fig.update_yaxes(title_text=param, range=[ye[0], ye[-1]], row=1, col=col)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title=f"val {label}")))
    _style(fig, f"Where the good settings are: best validation {label} per cell (completed trials)", legend_below=True)
    fig.update_annotations(font=dict(size=14), yshift=4)
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
        ordered = sorted(done, key=lambda p: p.number)
        fig.add_trace(
            go.Scatter(
                x=[p.number for p in ordered],
                y=list(itertools.accumulate((p.value for p in ordered), max)),
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


def final_comparison_figure(final: FinalComparison, stats: list[StudentStats] | None = None) -> go.Figure:
    """Test accuracy and AUC per student: mean ± std (point with error bars), each seed a dot beside it,
    the teacher a dashed line (legend entry ``teacher (test)``). No bars, so no truncated baseline.
    ``stats``: ``final_stats(final)``, computed when not given."""
    stats = final_stats(final) if stats is None else stats
    teacher = final.teacher
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
        if teacher is not None:
            fig.add_hline(
                y=getattr(teacher, metric),
                line=dict(color=TEACHER_COLOUR, dash="dash", width=2),
                row=1,
                col=col,
                showlegend=col == 1,
                name="teacher (test)",
                legendgroup="teacher",
            )
            shown.append(getattr(teacher, metric))
        if shown:
            lo, hi = min(shown), max(shown)
            pad = max(0.004, (hi - lo) * 0.12)
            fig.update_yaxes(range=[lo - pad, min(hi + pad, 1.0 + pad / 4)], row=1, col=col)
        fig.update_yaxes(title_text=f"test {metric_label(metric)}", tickformat=".3f", row=1, col=col)
        fig.update_xaxes(
            tickmode="array",
            tickvals=xs,
            ticktext=[s.label for s in stats],
            range=[-0.6, len(stats) - 0.35],
            zeroline=False,
            showgrid=False,
            row=1,
            col=col,
        )
    n = len(final.seeds) or max((s.n for s in stats), default=0)
    # Legend-only keys for the two marker kinds (the real traces are coloured per method).
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name=f"mean ± std ({n} seeds)",
            marker=dict(color="#555", size=12, symbol="diamond"),
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name="one seed",
            marker=dict(color="#555", size=7, symbol="circle-open", line=dict(width=1.8, color="#555")),
            hoverinfo="skip",
        )
    )
    _style(fig, "Best distilled student per method vs scratch, held-out test split", legend_below=True)
    fig.update_annotations(font=dict(size=14), yshift=4)  # the subplot titles
    return fig


def front_figure(final: FinalComparison, stats: list[StudentStats] | None = None) -> go.Figure | None:
    """Test accuracy (mean ± std over seeds) of each front candidate against its cost on a log axis: the distilled
    and the scratch student of each size, each joined by a line in cost order, the teacher as a star; buttons switch
    the cost (``COST_FIELDS``), ``final.front_cost`` first. None without candidate students."""
    stats = final_stats(final) if stats is None else stats
    rows = front_rows(final, stats)
    if not rows:
        return None
    teacher_cost = final.costs.teacher if final.costs is not None else None
    fields = [final.front_cost] + [f for f in COST_FIELDS if f != final.front_cost]
    fields = [f for f in fields if any(r.cost_of(f) is not None for r in rows)]
    if not fields:
        return None

    def xs(field: str, which: str) -> list[float | None]:
        return [r.cost_of(field) if getattr(r, which) is not None else None for r in rows]

    fig = go.Figure()
    for which, colour, symbol in (
        ("distilled", method_colour("kd"), "diamond"),
        ("scratch", method_colour("scratch"), "circle"),
    ):
        chosen = [getattr(r, which) for r in rows]
        text = []
        for r, st in zip(rows, chosen):
            if st is None:
                text.append("")
                continue
            how = f"{st.method} {format_params(st.params)}".strip() if which == "distilled" else "scratch"
            text.append(f"<b>{html.escape(r.student)}</b> {html.escape(which)}: {html.escape(how)}")
        fig.add_trace(
            go.Scatter(
                x=xs(fields[0], which),
                y=[st.accuracy_mean if st else None for st in chosen],
                error_y=dict(type="data", array=[st.accuracy_std if st else 0 for st in chosen], color=colour),
                mode="lines+markers+text",
                textposition="top center",
                texttemplate=[r.student if which == "distilled" else "" for r in rows],
                name=f"{which} (test, mean ± std)",
                line=dict(color=colour, width=2, dash="solid" if which == "distilled" else "dot"),
                marker=dict(color=colour, size=12, symbol=symbol, line=dict(width=1, color="white")),
                customdata=text,
                hovertemplate="%{customdata}<br>test accuracy %{y:.4f}<br>cost %{x:.4g}<extra></extra>",
            )
        )
    if final.teacher is not None and teacher_cost is not None:
        fig.add_trace(
            go.Scatter(
                x=[teacher_cost.value(fields[0])],
                y=[final.teacher.accuracy],
                mode="markers",
                name="teacher (test)",
                marker=dict(color=TEACHER_COLOUR, size=16, symbol="star"),
                hovertemplate="teacher: test accuracy %{y:.4f}<br>cost %{x:.4g}<extra></extra>",
            )
        )
    buttons = []
    for field in fields:
        update_x = [xs(field, "distilled"), xs(field, "scratch")]
        if final.teacher is not None and teacher_cost is not None:
            update_x.append([teacher_cost.value(field)])
        buttons.append(
            dict(
                label=COST_LABELS[field],
                method="update",
                args=[{"x": update_x}, {"xaxis.title.text": COST_LABELS[field]}],
            )
        )
    fig.update_layout(
        updatemenus=[dict(type="dropdown", buttons=buttons, x=1.0, xanchor="right", y=1.12, yanchor="bottom")],
        xaxis=dict(type="log", title=COST_LABELS[fields[0]]),
        yaxis=dict(title="test accuracy", tickformat=".3f"),
    )
    _style(fig, "Accuracy vs cost: each candidate student distilled and from scratch (test split)")
    return fig


def trials_front_figure(
    trials: Sequence[TrialPoint], costs: StudentCosts, field: str, front: Mapping[str, int], objective: str
) -> go.Figure | None:
    """Every completed trial's validation value against its candidate student's cost (``field``, log axis): the
    best trial of each candidate on the validation front (``front``: name → trial number) in its method's colour,
    joined cheapest first; every other trial, dominated, in grey. Hover: student, method, T, alpha. None without
    a completed trial of a measured candidate."""
    done = [
        p
        for p in trials
        if p.complete and p.student in costs.students and p.value is not None and not math.isnan(p.value)
    ]
    if not done:
        return None
    on_front = {number for number in front.values()}

    def hover(p: TrialPoint) -> str:
        return (
            f"<b>{html.escape(p.student)}</b> trial #{p.number}<br>{html.escape(p.method)} "
            f"{html.escape(format_params(p.params))}"
        )

    fig = go.Figure()
    grey = [p for p in done if p.number not in on_front]
    fig.add_trace(
        go.Scatter(
            x=[costs.students[p.student].value(field) for p in grey],
            y=[p.value for p in grey],
            mode="markers",
            name="dominated trials",
            marker=dict(color="#b0b0b0", size=7, opacity=0.7),
            customdata=[hover(p) for p in grey],
            hovertemplate="%{customdata}<br>validation %{y:.4f}<extra></extra>",
        )
    )
    best = sorted((p for p in done if p.number in on_front), key=lambda p: costs.students[p.student].value(field))
    fig.add_trace(
        go.Scatter(
            x=[costs.students[p.student].value(field) for p in best],
            y=[p.value for p in best],
            mode="lines+markers+text",
            text=[p.student for p in best],
            textposition="top center",
            name="validation front (best trial of each)",
            line=dict(color="#444", width=1.5),
            marker=dict(color=[method_colour(p.method) for p in best], size=12, line=dict(width=1, color="white")),
            customdata=[hover(p) for p in best],
            hovertemplate="%{customdata}<br>validation %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis=dict(type="log", title=COST_LABELS.get(field, field)),
        yaxis=dict(title=f"validation {metric_label(objective)}", tickformat=".3f"),
    )
    _style(fig, "The search: every completed trial against its student's cost (validation split)")
    return fig
