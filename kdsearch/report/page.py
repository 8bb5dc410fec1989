"""The study's report: one self-contained HTML page (plotly, JS embedded) and the terminal summary.

Reads only storage: the trials, and the ``spec``, ``final_comparison`` and ``teacher`` study attrs.
Three layers, so every figure and table can be tested without a browser:

* **data** (``content.py``): ``trial_points``, ``study_objective``, ``best_per_method``, ``final_stats``;
* **figures** (``figures``): ``temperature_figure``, ``param_map_figure``, ``feature_weight_figure``,
  ``history_figure``, ``final_comparison_figure``;
* **assembly** (here): the tables, ``summary_rows`` / ``summary_text`` (terminal) and ``write_report`` (the page).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Mapping, Sequence

import optuna
import plotly.graph_objects as go

from ..errors import KdsearchError
from ..files import write_text_atomically
from ..search.front import front
from ..search.results import (
    COST_FIELDS,
    COST_LABELS,
    ExportedFiles,
    FinalComparison,
    Scores,
    StudentCosts,
    TeacherScores,
)
from ..search.stats import PairedDifference
from ..search.study import SPEC_ATTR, best_trial_of, params_of, study_spec, value_of
from .content import (  # noqa: F401
    COMPARED_WITH,
    BinBest,
    MethodBest,
    StudentStats,
    TrialPoint,
    _fmt,
    _pp,
    best_per_bin,
    best_per_bin_line,
    best_per_method,
    best_per_student,
    budget_warning,
    final_stats,
    format_params,
    front_headline,
    front_rows,
    holm_note,
    mean_std,
    method_colour,
    method_sort_key,
    metric_label,
    study_objective,
    trial_points,
)
from .figures import (  # noqa: F401  (re-exported: the report's public names)
    feature_weight_figure,
    final_comparison_figure,
    front_figure,
    history_figure,
    log_ticks,
    param_map_figure,
    temperature_figure,
    trials_front_figure,
)

FIGURE_HEIGHT = 440
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


# --------------------------------------------------------------------------- tables


def _swatch(method: str) -> str:
    return f'<span class="sw" style="background:{method_colour(method)}"></span>{html.escape(method)}'


def best_per_student_table(rows: Mapping[str, MethodBest], objective: str | None) -> str:
    """HTML table ``#best-per-student``: each candidate student's best trial (validation) and its trial counts."""
    return _best_table("best-per-student", list(rows.items()), objective)


def trials_front_blocks(
    study: optuna.Study, points: Sequence[TrialPoint], per_student: Mapping[str, MethodBest], objective: str | None
) -> list:
    """The search's view of the front (validation): every completed trial against its student's stored cost
    (``final.cost`` of the stored spec), the best trial of each candidate that no cheaper one beats marked."""
    costs = StudentCosts.read(study)
    spec = study.user_attrs.get(SPEC_ATTR) or {}
    field = ((spec.get("final") or {}) if isinstance(spec, dict) else {}).get("cost", "params")
    if costs is None or field not in COST_FIELDS:
        return []
    best = {
        name: (value, r)
        for name, r in per_student.items()
        if r.trial is not None and name in costs.students and (value := costs.students[name].value(field)) is not None
    }
    on_front = front({name: (cost, r.value if r.value is not None else math.nan) for name, (cost, r) in best.items()})
    figure = trials_front_figure(points, costs, field, {n: best[n][1].trial for n in on_front}, objective or "accuracy")
    if figure is None:
        return []
    return [
        figure,
        "<p class=\"caption\">Each completed trial at its candidate student's cost; in colour (the method's), the best "
        "trial of each candidate that no cheaper candidate beats on validation: the validation front, which the "
        "final comparison retrains. Grey: dominated trials. Pruned trials are not drawn.</p>",
    ]


def best_per_method_table(rows: Sequence[MethodBest], objective: str | None) -> str:
    """HTML table ``#best-per-method`` of ``best_per_method`` rows; the objective's column is marked."""
    return _best_table("best-per-method", [(None, r) for r in rows], objective)


def _best_table(table_id: str, rows: Sequence[tuple[str | None, MethodBest]], objective: str | None) -> str:
    """The best-trial tables: a row per (student or None, best trial), the objective's column marked with ★; a
    student column first when the rows name students."""
    heads = {"accuracy": "val accuracy", "auc": "val AUC"}
    if objective in heads:
        heads[objective] += " ★"
    by_student = any(name is not None for name, _ in rows)
    first = "<th>student</th><th>best trial</th><th>method</th>" if by_student else "<th>method</th><th>best trial</th>"
    head = (
        f"<tr>{first}<th>params</th><th class=num>{heads['accuracy']}</th><th class=num>{heads['auc']}</th>"
        "<th class=num>complete</th><th class=num>pruned</th></tr>"
    )
    body = []
    for name, r in rows:
        trial = "—" if r.trial is None else f"#{r.trial}"
        lead = (
            f"<td>{html.escape(name or '')}</td><td>{trial}</td><td>{_swatch(r.method)}</td>"
            if by_student
            else f"<td>{_swatch(r.method)}</td><td>{trial}</td>"
        )
        body.append(
            f"<tr>{lead}<td>{html.escape(format_params(r.params)) or '—'}</td>"
            f"<td class=num>{_fmt(r.accuracy)}</td><td class=num>{_fmt(r.auc)}</td>"
            f"<td class=num>{r.complete}</td><td class=num>{r.pruned}</td></tr>"
        )
    return f'<table id="{table_id}" class="data">{head}{"".join(body)}</table>'


def _delta_cell(d: PairedDifference | None) -> str:
    """``+1.94 pp [+0.86, +3.02] ✓`` (✓: the 95% interval excludes 0), ``[n/a]`` for one seed, ``—`` for none."""
    if d is None:
        return "—"
    mean = f"{d.mean * 100:+.2f} pp"
    if d.low is None or d.high is None:
        return f'{mean} <span class="ci">[n/a: 1 seed]</span>'
    interval = f"[{d.low * 100:+.2f}, {d.high * 100:+.2f}]"
    if d.significant:
        return f'<b>{mean}</b> <span class="ci">{interval}</span> <span title="the 95% interval excludes 0">✓</span>'
    return f'{mean} <span class="ci">{interval}</span>'


def final_table(final: FinalComparison, stats: list[StudentStats] | None = None) -> str:
    """HTML table ``#final-comparison`` with the figure's numbers: mean ± std, n seeds, and per baseline the paired
    per-seed Δ of accuracy and of AUC (mean and 95% t-interval, ✓ when significant) in one cell: vs scratch, vs
    untuned KD and vs pseudo-label when the study has them (``stats``: ``final_stats(final)``, computed when not
    given). Inside a horizontally scrolling box: a narrow window never cuts a column."""
    stats = final_stats(final) if stats is None else stats
    shown = [(name, attr) for name, attr in COMPARED_WITH if name == "scratch" or any(getattr(s, attr) for s in stats)]
    head = (
        "<tr><th>student</th><th>trial</th><th>params</th><th class=num>test accuracy</th><th class=num>test AUC</th>"
        + "".join(f"<th class=num>Δ vs {name}</th>" for name, _ in shown)
        + "<th class=num>seeds</th></tr>"
    )

    def deltas(s: StudentStats, attr: str) -> str:
        d = getattr(s, attr) or {}
        if not d and attr == "vs_scratch" and s.accuracy_vs_scratch_pp is not None:
            return f"accuracy {_pp(s.accuracy_vs_scratch_pp)}<br>AUC {_pp(s.auc_vs_scratch_pp)}"
        if not d:
            return "—"
        return f"accuracy {_delta_cell(d.get('accuracy'))}<br>AUC {_delta_cell(d.get('auc'))}"

    def row(s: StudentStats) -> str:
        return (
            f"<tr><td>{_swatch_label(s)}</td>"
            f"<td>{'—' if s.trial is None else f'#{s.trial}'}</td>"
            f"<td>{html.escape(format_params(s.params)) or '—'}</td>"
            f"<td class=num>{s.accuracy_mean:.4f} ± {s.accuracy_std:.4f}</td>"
            f"<td class=num>{s.auc_mean:.4f} ± {s.auc_std:.4f}</td>"
            + "".join(f"<td class=num>{deltas(s, attr)}</td>" for _, attr in shown)
            + f"<td class=num>{s.n}</td></tr>"
        )

    body = "".join(row(s) for s in stats)
    teacher = final.teacher
    if teacher:
        body += (
            f'<tr class="ref"><td><span class="sw dash"></span>teacher</td><td>—</td><td>—</td>'
            f"<td class=num>{_fmt(teacher.accuracy)}</td><td class=num>{_fmt(teacher.auc)}</td>"
            + "<td class=num></td>" * len(shown)
            + "<td class=num>—</td></tr>"
        )
    return f'<div class="scroll"><table id="final-comparison" class="data">{head}{body}</table></div>'


def vs_text(s: StudentStats) -> str:
    """`` (vs scratch: accuracy +1.94 pp [95% CI +0.86, +3.02, significant], AUC …; vs untuned KD: …; vs
    pseudo-label: …)`` for the terminal summary; the paired differences when the runs pair by seed."""
    parts = []
    for name, attr in COMPARED_WITH:
        paired = getattr(s, attr)
        if paired:
            parts.append(f"vs {name}: accuracy {paired['accuracy'].text()}, AUC {paired['auc'].text()}")
        elif attr == "vs_scratch" and s.accuracy_vs_scratch_pp is not None:
            parts.append(f"vs {name}: accuracy {_pp(s.accuracy_vs_scratch_pp)}, AUC {_pp(s.auc_vs_scratch_pp)}")
    return f" ({'; '.join(parts)})" if parts else ""


def rerun_text(final: FinalComparison) -> str | None:
    """A line saying that this final comparison is a re-run, or None for a study's first one."""
    if final.run < 2:
        return None
    earlier = ", ".join(str(n) for n in final.earlier_runs_trials) or "?"
    now = final.n_complete_trials
    return (
        f"re-run {final.run}: the test split was scored before, after {earlier} completed trial(s); this comparison "
        f"ran after {'?' if now is None else now}. Choosing between runs by their test scores tunes on test"
    )


COST_COLUMNS = (
    ("params", "parameters", "{:,.0f}"),
    ("size_mb", "size (MB)", "{:.2f}"),
    ("flops", "FLOPs / image", "{:,.0f}"),
    ("latency_ms", "CPU latency (ms, batch 1)", "{:.2f}"),
    ("throughput", "CPU throughput (img/s, batch 64)", "{:,.0f}"),
)


def cost_lines(final: FinalComparison) -> list[tuple[str, str]]:
    """(model, 'params …, size …, …') for the teacher and the student architecture, if measured."""
    return [
        (name, ", ".join(f"{label} {fmt.format(getattr(row, key))}" for key, label, fmt in COST_COLUMNS))
        for name, row in final.cost.items()
    ]


def cost_table(final: FinalComparison) -> str:
    """HTML table ``#cost``: parameters, size, FLOPs, latency and throughput of teacher and student."""
    cost = final.cost
    if not cost:
        return ""
    head = "<tr><th>model</th>" + "".join(f"<th class=num>{label}</th>" for _, label, _ in COST_COLUMNS) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td class=num>{fmt.format(getattr(row, key))}</td>" for key, _, fmt in COST_COLUMNS)
        + "</tr>"
        for name, row in cost.items()
    )
    return (
        '<p class="caption">Cost of inference. Scratch and distilled students share the student architecture '
        "(a hint regressor is training-only and not counted); size is the saved state_dict.</p>"
        f'<table id="cost" class="data">{head}{body}</table>'
    )


def front_table(final: FinalComparison, stats: list[StudentStats]) -> str:
    """The candidate students of the front, cheapest first: costs, distilled and scratch test accuracy, paired Δ."""
    rows = front_rows(final, stats)
    head = (
        "<tr><th>student</th><th>architecture</th><th class=num>parameters</th><th class=num>FLOPs</th>"
        "<th class=num>ONNX ms</th><th class=num>PyTorch ms</th><th>distilled (test accuracy)</th>"
        "<th>scratch</th><th>Δ accuracy vs scratch</th><th>Δ AUC vs scratch</th></tr>"
    )

    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    def acc(st: StudentStats | None) -> str:
        return (
            "–"
            if st is None
            else f'<span style="white-space:nowrap">{st.accuracy_mean:.4f} ± {st.accuracy_std:.4f}</span>'
        )

    body = []
    for r in rows:
        d = r.distilled
        how = (
            ""
            if d is None
            else f" <span class=ci>{html.escape(d.method)} {html.escape(format_params(d.params))}</span>"
        )
        vs = (d.vs_scratch or {}) if d is not None else {}
        arch = (
            "" if r.cost is None else r.cost.arch + (f" {format_params(r.cost.arch_args)}" if r.cost.arch_args else "")
        )
        body.append(
            f"<tr><td>{html.escape(r.student)}</td><td>{html.escape(arch)}</td>"
            f"<td class=num>{num(r.cost_of('params'), ',.0f')}</td><td class=num>{num(r.cost_of('flops'), ',.0f')}</td>"
            f"<td class=num>{num(r.cost_of('onnx_latency_ms'), '.3f')}</td>"
            f"<td class=num>{num(r.cost_of('latency_ms'), '.3f')}</td>"
            f"<td>{acc(d)}{how}</td><td>{acc(r.scratch)}</td>"
            f"<td>{_delta_cell(vs.get('accuracy'))}</td><td>{_delta_cell(vs.get('auc'))}</td></tr>"
        )
    return f'<div class="scroll"><table id="front" class="data">{head}{"".join(body)}</table></div>'


def front_blocks(final: FinalComparison, stats: list[StudentStats]) -> list:
    """The report's front section (headline, figure, table, what was left out) for a study with candidates."""
    if not final.front:
        return []
    headline = front_headline(final, stats)
    figure = front_figure(final, stats)
    costs = final.costs
    where = (
        f"Costs measured once for the study on {html.escape(costs.hardware)}: medians of {costs.repeats} timed runs "
        "after warm-up, batch 1 (latency) and 64 (throughput), in PyTorch and ONNX Runtime (CPU provider)."
        if costs is not None
        else ""
    )
    off = "".join(f"<li>{html.escape(n)}: {html.escape(why)}</li>" for n, why in final.off_front.items())
    return [
        "<h3>Choosing the student: accuracy vs cost</h3>",
        *([f'<p class="note"><b>{html.escape(headline)}</b></p>'] if headline else []),
        *([figure] if figure is not None else []),
        '<p class="caption">Each candidate student on the validation front (its best trial not beaten by a cheaper '
        f"candidate in {html.escape(COST_LABELS.get(final.front_cost, final.front_cost))}) is retrained from its best "
        "trial and from scratch (same architecture, same seeds) and scored on test; Δ is paired by seed and "
        "Holm-corrected across sizes. With candidates, the untuned-KD and pseudo-label baselines are not retrained. "
        f"{where}</p>",
        front_table(final, stats),
        *([f'<p class="caption">Not retrained:</p><ul class="caption">{off}</ul>'] if off else []),
    ]


def _swatch_label(s: StudentStats) -> str:
    return f'<span class="sw" style="background:{method_colour(s.method)}"></span>{html.escape(s.label)}'


# --------------------------------------------------------------------------- summary and page


def summary_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """(label, value) rows that summarise the study for the terminal and the report."""
    final = FinalComparison.read(study)
    return _summary_rows(study, final, final_stats(final) if final else [])


def _summary_rows(
    study: optuna.Study, final: FinalComparison | None, stats: list[StudentStats]
) -> list[tuple[str, str]]:
    """``summary_rows`` with the final comparison and its statistics already at hand."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    rows = [("study", study.study_name), ("trials", states or "none")]
    objective = study_objective(study)
    if objective:
        shown = f"validation {metric_label(objective)} (maximized)"
        if len(study.directions) > 1:  # search.strategy motpe / nsga2
            names = study.metric_names or []
            cost = names[1] if len(names) > 1 else "cost"
            shown += f" and {COST_LABELS.get(cost, cost)} (minimized): a multi-objective study, no pruning"
        rows.append(("objective", shown))
    teacher = TeacherScores.read(study)
    if teacher:
        rows.append(("teacher (val)", f"accuracy {teacher.val_accuracy:.4f}, AUC {teacher.val_auc:.4f}"))
    best = best_trial_of(study)
    if best is not None:
        method, params = params_of(best) if "method" in best.params else ("?", {})
        shown = format_params(params)
        student = f" {best.params['student']}" if "student" in best.params else ""
        what = f"#{best.number}{student} {method}{' ' + shown if shown else ''}"
        rows.append(("best trial (val)", f"{what}: val {metric_label(objective)} {value_of(best):.4f}"))
    if final:
        n = len(final.seeds)
        if final.teacher:
            t = final.teacher
            rows.append(("teacher (test)", f"accuracy {t.accuracy:.4f}, AUC {t.auc:.4f}"))
        rerun = rerun_text(final)
        if rerun:
            rows.append(("final comparison", rerun))
        headline = front_headline(final, stats)
        if headline:
            rows.append(("students", headline))
        for s in stats:
            text = f"accuracy {s.accuracy_mean:.4f} ± {s.accuracy_std:.4f}, AUC {s.auc_mean:.4f} ± {s.auc_std:.4f}"
            rows.append((f"{s.label} (test, {n} seed{'s' * (n != 1)})", text + vs_text(s)))
        rows += [(f"cost: {name}", text) for name, text in cost_lines(final)]
        for method, e in sorted(final.exports.items(), key=lambda kv: method_sort_key(kv[0])):
            rows.append(
                (
                    f"student {method} (files)",
                    f"{Path(e.base or '.') / e.folder}  (seed {e.seed}: safetensors, TorchScript, ONNX, card)",
                )
            )
    return rows


def summary_text(study: optuna.Study) -> str:
    """The terminal summary: ``summary_rows`` aligned, then the budget warning when there is one."""
    rows = summary_rows(study)
    width = max(len(k) for k, _ in rows)
    warning = budget_warning(study.get_trials(deepcopy=False), FinalComparison.read(study))
    return "\n".join([f"{k.ljust(width)}  {v}" for k, v in rows] + ([warning] if warning else []))


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
.ci{color:#666;font-size:.92em}
.scroll{overflow-x:auto;max-width:100%}
.note.warn{border-left-color:#d62728;background:#fdf3f3}
"""


EXPORT_KINDS = (("onnx", "ONNX"), ("torchscript", "TorchScript"), ("safetensors", "safetensors"), ("card", "card"))


def students_table(exports: Mapping[str, ExportedFiles], report_dir: Path) -> str:
    """The exported distilled students (one row per method) with links to their files, relative to the report."""
    import os

    rows = []
    for method in sorted(exports, key=method_sort_key):
        e = exports[method]
        links = []
        for kind, label in EXPORT_KINDS:
            if kind in e.files:
                href = os.path.relpath(Path(e.base or report_dir) / e.files[kind], report_dir)
                size = e.sizes.get(kind)
                shown = f"{label} ({size / 1e6:.2f} MB)" if size is not None and kind != "card" else label
                links.append(f'<a href="{html.escape(href)}">{html.escape(shown)}</a>')
        test = e.test or Scores(accuracy=float("nan"), auc=float("nan"))
        diff = e.onnx_max_abs_diff
        rows.append(
            f'<tr><td><span class="sw" style="background:{method_colour(method)}"></span>{html.escape(method)}</td>'
            f'<td class="num">{e.seed}</td><td class="num">{test.accuracy:.4f}</td>'
            f'<td class="num">{test.auc:.4f}</td>'
            f'<td class="num">{"" if diff is None else f"{diff:.1e}"}</td><td>{" · ".join(links)}</td></tr>'
        )
    return (
        '<h2 id="students">Distilled students (files)</h2><p class="caption">For each retrained trial, the '
        "retrained student whose test score is closest to the mean over seeds (a representative picked by its test "
        "score, not a better model: picking the best seed would tune on test), ready to ship; every seed's weights "
        "are kept beside it in seeds/. The ONNX file was checked against PyTorch with onnxruntime (max |Δ| of the "
        "logits). <code>kdsearch export --epochs N</code> retrains one for longer.</p>"
        '<table class="data"><tr><th>method</th><th>seed</th><th>test accuracy</th><th>test AUC</th>'
        f"<th>ONNX max |Δ|</th><th>files</th></tr>{''.join(rows)}</table>"
    )


def _students_mode(study: optuna.Study) -> str:
    """``final.students`` of the study's stored spec ("best" or "each"; "each" for a spec that cannot be read)."""
    try:
        return study_spec(study).final.students
    except KdsearchError:
        return "each"


def write_report(study: optuna.Study, path: Path) -> Path:
    """Write the study's report as one HTML file with plotly's JS embedded (works offline).

    Validation section: best-per-method table, metric vs temperature (the objective first, pruned trials
    drawn at their last value), the T × alpha/beta maps of the logit methods, metric vs feature weight
    (only with cosine/hint trials), optimization history. Test section: the final comparison figure and
    table (paired Δ), a re-run labelled so. Figures are ``div#figure-N`` in page order.
    """
    trials = study.get_trials(deepcopy=False)  # fetched once for the search section's points and table
    points = trial_points(trials)
    objective = study_objective(study)
    shown_metric = objective or "accuracy"
    final = FinalComparison.read(study)
    stats = final_stats(final) if final else []
    has_temperature = any(p.complete and "temperature" in p.params for p in points)

    blocks: list[str | go.Figure] = ["<h2>Search (validation split)</h2>"]  # page order
    per_student = best_per_student(trials)
    if per_student:
        blocks.append(
            '<p class="caption">Best completed trial of each candidate student by the objective'
            f" (★: validation {metric_label(objective)}); the final comparison retrains those on the front "
            "(see Choosing the student), each beside a scratch student of its architecture.</p>"
        )
        blocks.append(best_per_student_table(per_student, objective))
        blocks.extend(trials_front_blocks(study, points, per_student, objective))
    elif any(p.complete for p in points):
        blocks.append(
            '<p class="caption">Best completed trial of each method by the objective'
            f" (★: validation {metric_label(objective)}); these are the trials the final comparison retrains.</p>"
        )
        blocks.append(best_per_method_table(best_per_method(trials, points), objective))
    else:
        blocks.append('<p class="caption">No completed trial yet.</p>')
    if has_temperature:  # the objective's figure first
        metrics = [shown_metric] + [m for m in ("accuracy", "auc") if m != shown_metric]
        blocks += [temperature_figure(points, m) for m in metrics]
        maps = param_map_figure(points, shown_metric)
        if maps is not None:
            blocks.append(maps)
    fw = feature_weight_figure(points, shown_metric)
    if fw is not None:
        blocks.append(fw)
    if any(p.complete for p in points):
        blocks.append(history_figure(points, objective))
    if final:
        rerun = rerun_text(final)
        heading = "Final comparison (test split)" + (f" — re-run {final.run}" if rerun else "")
        warning = budget_warning(trials, final)
        blocks += [
            f"<h2>{html.escape(heading)}</h2>",
            *([f'<p class="note">This is a {html.escape(rerun)}.</p>'] if rerun else []),
            *([f'<p class="note warn">{html.escape(warning.removeprefix("warning: "))}</p>'] if warning else []),
            final_comparison_figure(final, stats),
            '<p class="caption">Mean ± sample standard deviation over seeds. Every student trains with the same '
            "seeds, and seed <i>s</i> gives each the same initial weights and the same seeded shuffle (scratch "
            "draws its batches from the labeled images only, the distilled students from the whole pool, with the "
            "same number of steps), so Δ is <b>paired by seed</b>: the mean of the per-seed differences in "
            "percentage points, with its 95% Student-t interval in brackets; ✓ and bold when significant. "
            "Untuned KD: kd at a fixed recipe (final.untuned_kd), the number a hand-tuned tutorial gives: Δ vs "
            "untuned KD is what the search bought. Pseudo-label: cross-entropy on the labeled images plus the "
            "teacher's arg-max label of each unlabeled image, same steps."
            + (f" {html.escape(note)}" if (note := holm_note(stats)) else "")
            + "</p>",
            final_table(final, stats),
            *front_blocks(final, stats),
            cost_table(final),
        ]
        if final.exports:
            blocks.append(students_table(final.exports, path.parent))

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
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _summary_rows(study, final, stats)
    )
    retrained = "best trial of each method" if _students_mode(study) == "each" else "study's best trial"
    if final is not None and final.front:
        retrained = "best trial of each candidate student on the validation front"
    note = (
        f'<p class="note">Trials are tuned on the <b>validation</b> split. The final comparison retrains the {retrained} '
        "and a scratch student (cross-entropy on the labeled images only, same optimizer "
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
    write_text_atomically(path, page)  # a Ctrl-C while writing leaves the old report or the new one
    return path
