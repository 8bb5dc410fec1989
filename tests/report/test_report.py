"""Unit tests of the report's figure builders and tables on small hand-made Optuna studies (no training)."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from kdsearch.report.page import (
    best_per_bin,
    best_per_bin_line,
    best_per_method,
    best_per_method_table,
    feature_weight_figure,
    final_comparison_figure,
    final_stats,
    final_table,
    history_figure,
    holm_note,
    param_map_figure,
    study_objective,
    summary_rows,
    summary_text,
    temperature_figure,
    trial_points,
    write_report,
)
from kdsearch.search.results import FinalComparison
from kdsearch.search.stats import holm_adjusted

METHODS = ["kd", "lskd", "dkd", "cosine", "hint"]
SPACE = {
    "temperature": FloatDistribution(0.5, 20.0, log=True),
    "alpha": FloatDistribution(0.0, 1.0),
    "alpha_tckd": FloatDistribution(0.1, 4.0, log=True),
    "beta": FloatDistribution(0.5, 16.0, log=True),
    "feature_weight": FloatDistribution(0.01, 10.0, log=True),
}

# (method, params, val accuracy, val AUC, state); the objective is val accuracy.
TRIALS = [
    ("kd", {"temperature": 1.0, "alpha": 0.2}, 0.80, 0.970, TrialState.COMPLETE),  # 0
    ("kd", {"temperature": 4.0, "alpha": 0.5}, 0.85, 0.980, TrialState.COMPLETE),  # 1: best kd, best overall
    ("kd", {"temperature": 10.0, "alpha": 0.9}, 0.82, 0.985, TrialState.COMPLETE),  # 2
    ("kd", {"temperature": 2.0, "alpha": 0.4}, 0.60, 0.900, TrialState.PRUNED),  # 3
    ("lskd", {"temperature": 2.0, "alpha": 0.3}, 0.83, 0.975, TrialState.COMPLETE),  # 4
    ("lskd", {"temperature": 8.0, "alpha": 0.6}, 0.84, 0.978, TrialState.COMPLETE),  # 5: best lskd
    ("dkd", {"temperature": 3.0, "alpha_tckd": 1.0, "beta": 8.0}, 0.81, 0.972, TrialState.COMPLETE),  # 6
    ("cosine", {"feature_weight": 0.1}, 0.79, 0.960, TrialState.COMPLETE),  # 7
    ("cosine", {"feature_weight": 1.0}, 0.80, 0.962, TrialState.COMPLETE),  # 8: best cosine
    ("hint", {"feature_weight": 0.5}, 0.78, 0.958, TrialState.COMPLETE),  # 9
    ("hint", {"feature_weight": 2.0}, 0.70, 0.950, TrialState.PRUNED),  # 10
]

FINAL = {
    "split": "test",
    "objective": "accuracy",
    "seeds": [0, 1, 2],
    "students": [
        {
            "label": "best kd",
            "method": "kd",
            "params": {"temperature": 4.0, "alpha": 0.5},
            "trial": 1,
            "runs": [
                {"seed": 0, "accuracy": 0.84, "auc": 0.980},
                {"seed": 1, "accuracy": 0.86, "auc": 0.990},
                {"seed": 2, "accuracy": 0.85, "auc": 0.985},
            ],
        },
        {
            "label": "best cosine",
            "method": "cosine",
            "params": {"feature_weight": 1.0},
            "trial": 8,
            "runs": [
                {"seed": 0, "accuracy": 0.80, "auc": 0.970},
                {"seed": 1, "accuracy": 0.81, "auc": 0.972},
                {"seed": 2, "accuracy": 0.82, "auc": 0.974},
            ],
        },
        {
            "label": "scratch",
            "method": "scratch",
            "params": {},
            "trial": None,
            "runs": [
                {"seed": 0, "accuracy": 0.80, "auc": 0.970},
                {"seed": 1, "accuracy": 0.82, "auc": 0.975},
                {"seed": 2, "accuracy": 0.81, "auc": 0.972},
            ],
        },
    ],
    "teacher": {"accuracy": 0.90, "auc": 0.995},
    "n_complete_trials": 9,
}


def typed(final: dict) -> FinalComparison:
    """A stored final comparison as the report reads it."""
    return FinalComparison.model_validate(final)


def _add(study: optuna.Study, method: str, params: dict, acc: float, auc: float, state=TrialState.COMPLETE) -> None:
    full = {"method": method, **{f"{method}_{k}": v for k, v in params.items()}}
    dists = {"method": CategoricalDistribution(METHODS), **{f"{method}_{k}": SPACE[k] for k in params}}
    study.add_trial(
        create_trial(
            params=full,
            distributions=dists,
            value=acc if state == TrialState.COMPLETE else None,
            state=state,
            user_attrs={"accuracy": acc, "auc": auc},
        )
    )


def make_study(trials=TRIALS, *, final: dict | None = FINAL, objective: str | None = "accuracy") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="handmade", direction="maximize")
    if objective is not None:
        study.set_user_attr("spec", {"search": {"objective": objective}})
    for method, params, acc, auc, state in trials:
        _add(study, method, params, acc, auc, state)
    if final is not None:
        study.set_user_attr("final_comparison", final)
    return study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return make_study()


def _traces(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in fig.data}


# --------------------------------------------------------------------------- temperature figures


@pytest.mark.parametrize("metric", ["accuracy", "auc"])
def test_temperature_figure_has_one_trace_per_method_with_its_completed_trials(study, metric) -> None:
    fig = temperature_figure(trial_points(study.trials), metric)
    traces = _traces(fig)
    # few trials: no best-per-bin line; no cosine/hint; kd's pruned trial in a trace of its own
    assert set(traces) == {"kd", "lskd", "dkd", "kd: pruned (last epoch run)"}
    assert [len(traces[m].x) for m in ("kd", "lskd", "dkd")] == [3, 2, 1]
    assert sorted(traces["kd"].x) == [1.0, 4.0, 10.0]
    by_t = dict(zip(traces["kd"].x, traces["kd"].y))
    assert by_t[4.0] == (0.85 if metric == "accuracy" else 0.980)
    cut = traces["kd: pruned (last epoch run)"]
    assert list(cut.x) == [2.0] and list(cut.y) == [0.60 if metric == "accuracy" else 0.900]  # its last value
    assert cut.marker.symbol == "x-thin" and cut.marker.color == traces["kd"].marker.color
    colours = {traces[m].marker.color for m in ("kd", "lskd", "dkd")}
    assert len(colours) == 3 and all(isinstance(c, str) for c in colours)  # one plain colour per method
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.yaxis.title.text == f"validation {'accuracy' if metric == 'accuracy' else 'AUC'}"


def test_temperature_hover_shows_alpha_only_for_methods_that_have_it(study) -> None:
    traces = _traces(temperature_figure(trial_points(study.trials), "accuracy"))
    assert all("alpha=" in text for text in traces["kd"].text + traces["lskd"].text)
    dkd = traces["dkd"].text
    assert all("alpha=" not in text for text in dkd)
    assert all("alpha_tckd=" in text and "beta=" in text for text in dkd)
    for t in traces.values():  # no colour scale anywhere that could show a made-up alpha
        assert t.marker.colorscale is None and not t.marker.showscale


def _many_kd_trials(n: int = 24) -> list[tuple]:
    """kd trials spread log-uniformly over T, two per T bin, peaking at T = 4."""
    rows = []
    for i in range(n):
        t = 0.5 * (40 ** (i / (n - 1)))
        acc = 0.85 - 0.02 * (math.log(t / 4.0)) ** 2 + 0.001 * (i % 3)
        rows.append(("kd", {"temperature": t, "alpha": (i % 10) / 10}, acc, 0.97, TrialState.COMPLETE))
    return rows


def test_best_per_t_bin_line_sits_on_the_best_trial_of_each_bin() -> None:
    study = make_study(_many_kd_trials(), final=None)
    fig = temperature_figure(trial_points(study.trials), "accuracy")
    traces = _traces(fig)
    assert set(traces) == {"kd", "kd: best per T bin"}
    points = list(zip(traces["kd"].x, traces["kd"].y))
    line = list(zip(traces["kd: best per T bin"].x, traces["kd: best per T bin"].y))
    assert len(line) >= 3
    assert all(p in points for p in line)  # drawn at the trial that achieved it, not at a bin centre
    assert [x for x, _ in line] == sorted(x for x, _ in line)
    binned = best_per_bin([(x, y, i) for i, (x, y) in enumerate(points)], bins=8)
    assert [(b.x, b.y) for b in binned] == line
    for b in binned:  # each is the max of its bin
        assert b.y == max(y for x, y in points if b.low <= x <= b.high)


def test_best_per_t_bin_hover_counts_the_completed_and_pruned_trials_of_its_bin() -> None:
    done = _many_kd_trials()
    bins = best_per_bin([(p["temperature"], acc, i) for i, (_, p, acc, _, _) in enumerate(done)], bins=8)
    edge = bins[2].high  # shared by the third and fourth bin: a pruned trial there counts once, in the fourth
    cut = [("kd", {"temperature": t, "alpha": 0.5}, 0.5, 0.9, TrialState.PRUNED) for t in (0.51, 0.52, edge)]
    traces = _traces(temperature_figure(trial_points(make_study(done + cut, final=None).trials), "accuracy"))
    assert sorted(traces["kd: pruned (last epoch run)"].x) == [0.51, 0.52, edge]
    hover = traces["kd: best per T bin"].text
    completed = [int(re.search(r"best of (\d+) completed", h).group(1)) for h in hover]
    pruned = [int(re.search(r"\((\d+) pruned there\)", h).group(1)) for h in hover]
    assert completed == [b.count for b in bins] and sum(completed) == len(done)
    assert pruned == [2, 0, 0, 1, 0, 0, 0, 0]


def test_best_per_bin_line_is_skipped_without_enough_trials() -> None:
    assert best_per_bin_line([]) == []
    assert best_per_bin_line([(1.0, 0.8, 0), (2.0, 0.9, 1), (4.0, 0.7, 2)]) == []  # 3 trials: too few bins
    lone = [(0.5 * 2**i, 0.8, i) for i in range(9)]  # 9 trials, 3 bins: 3 per bin -> drawn
    assert len(best_per_bin_line(lone)) == 3
    # 9 trials, 3 bins, but two of the three bins hold a single trial: no line.
    sparse = [(0.5 + 0.05 * i, 0.8, i) for i in range(7)] + [(100.0, 0.8, 7), (5000.0, 0.8, 8)]
    assert [b.count for b in best_per_bin(sparse, 3)] == [7, 1, 1]
    assert best_per_bin_line(sparse) == []


# --------------------------------------------------------------------------- feature weight figure


def test_feature_weight_figure_for_methods_without_temperature(study) -> None:
    fig = feature_weight_figure(trial_points(study.trials), "accuracy")
    assert fig is not None
    traces = _traces(fig)
    assert set(traces) == {"cosine", "hint"}
    assert len(traces["cosine"].x) == 2 and len(traces["hint"].x) == 1  # hint's pruned trial left out
    assert traces["cosine"].marker.color != traces["hint"].marker.color
    assert fig.layout.xaxis.type == "log"
    assert "feature weight" in fig.layout.title.text.lower()
    assert all("alpha" not in text and "temperature" not in text for t in traces.values() for text in t.text)
    (ref,) = fig.layout.shapes  # the best temperature-based trial as a reference line with a legend entry
    assert ref.y0 == ref.y1 == 0.85 and ref.showlegend and "kd #1" in ref.name


def test_feature_weight_figure_only_when_such_trials_exist() -> None:
    kd_only = make_study([t for t in TRIALS if t[0] in ("kd", "lskd", "dkd")], final=None)
    assert feature_weight_figure(trial_points(kd_only.trials), "accuracy") is None
    pruned_only = make_study([("hint", {"feature_weight": 1.0}, 0.7, 0.9, TrialState.PRUNED)], final=None)
    assert feature_weight_figure(trial_points(pruned_only.trials), "accuracy") is None


# --------------------------------------------------------------------------- best per method (validation)


def test_best_per_method_table_has_one_row_per_method_with_its_best_trial(study) -> None:
    rows = best_per_method(study.trials)
    assert sorted(r.method for r in rows) == sorted(METHODS)
    by = {r.method: r for r in rows}
    assert {m: by[m].trial for m in METHODS} == {"kd": 1, "lskd": 5, "dkd": 6, "cosine": 8, "hint": 9}
    assert (by["kd"].complete, by["kd"].pruned) == (3, 1)
    assert (by["hint"].complete, by["hint"].pruned) == (1, 1)
    assert by["kd"].params == {"temperature": 4.0, "alpha": 0.5}
    assert (by["kd"].accuracy, by["kd"].auc) == (0.85, 0.980)
    assert rows[0].method == "kd"  # best first
    assert [r.value for r in rows] == sorted((r.value for r in rows), reverse=True)

    table = best_per_method_table(rows, "accuracy")
    assert table.startswith('<table id="best-per-method"')
    assert table.count("<tr>") == 1 + len(METHODS)
    assert "val accuracy ★" in table and "#5" in table and "alpha_tckd=1, beta=8" in table


def test_best_per_method_lists_a_method_with_no_completed_trial() -> None:
    pruned = ("lskd", {"temperature": 1.0, "alpha": 0.1}, 0.5, 0.9, TrialState.PRUNED)
    trials = [t for t in TRIALS if t[0] != "lskd"] + [pruned]
    rows = best_per_method(make_study(trials, final=None).trials)
    lskd = next(r for r in rows if r.method == "lskd")
    assert lskd.trial is None and lskd.complete == 0 and lskd.pruned == 1
    assert rows[-1] is lskd  # methods without a completed trial come last


# --------------------------------------------------------------------------- final comparison (test)


def test_final_stats_means_stds_and_pp_vs_scratch() -> None:
    stats = {s.label: s for s in final_stats(typed(FINAL))}
    kd, cosine, scratch = stats["best kd"], stats["best cosine"], stats["scratch"]
    assert kd.accuracy_mean == pytest.approx(0.85)
    assert kd.accuracy_std == pytest.approx(statistics.stdev([0.84, 0.86, 0.85]))  # sample std
    assert kd.auc_mean == pytest.approx(0.985) and kd.auc_std == pytest.approx(0.005)
    assert scratch.accuracy_mean == pytest.approx(0.81)
    assert kd.accuracy_vs_scratch_pp == pytest.approx(4.0)
    assert kd.auc_vs_scratch_pp == pytest.approx((0.985 - 0.972333333) * 100)
    assert cosine.accuracy_vs_scratch_pp == pytest.approx(0.0, abs=1e-9)
    assert scratch.accuracy_vs_scratch_pp is None and scratch.auc_vs_scratch_pp is None
    assert kd.n == 3 and kd.seeds == (0, 1, 2)
    assert [s.label for s in final_stats(typed(FINAL))] == ["best kd", "best cosine", "scratch"]  # scratch last


def test_final_comparison_figure_points_with_error_bars_seeds_and_teacher_legend() -> None:
    fig = final_comparison_figure(typed(FINAL))
    assert not any(isinstance(t, go.Bar) for t in fig.data)  # no (truncated) bars
    traces = [t for t in fig.data if t.x != (None,)]
    means = [t for t in traces if t.name.endswith("mean ± std")]
    seeds = [t for t in traces if t.name.endswith(": seeds")]
    assert len(means) == len(seeds) == 2 * 3  # per student, per subplot
    kd_acc = next(t for t in means if t.name == "best kd: mean ± std" and t.yaxis == "y")
    assert kd_acc.y[0] == pytest.approx(0.85)
    assert kd_acc.error_y.array[0] == pytest.approx(statistics.stdev([0.84, 0.86, 0.85]))
    kd_seeds = next(t for t in seeds if t.name == "best kd: seeds" and t.yaxis == "y")
    assert list(kd_seeds.y) == [0.84, 0.86, 0.85]
    assert all(x > kd_acc.x[0] for x in kd_seeds.x)  # beside the mean, not on top of it
    teacher = [s for s in fig.layout.shapes if s.name == "teacher (test)"]
    assert len(teacher) == 2 and {s.y0 for s in teacher} == {0.90, 0.995}
    assert all(s.line.dash == "dash" for s in teacher)
    assert sum(bool(s.showlegend) for s in teacher) == 1  # one legend entry for both subplots
    legend = {t.name for t in fig.data if t.showlegend is not False}
    assert "mean ± std (3 seeds)" in legend and "one seed" in legend
    assert "scratch" in fig.layout.title.text


def test_final_table_has_the_same_numbers() -> None:
    table = final_table(typed(FINAL))
    assert table.startswith('<div class="scroll"><table id="final-comparison"')  # scrolls, never cut
    assert "0.8500 ± 0.0100" in table  # kd accuracy
    assert "+4.00 pp" in table  # kd accuracy vs scratch
    assert "+1.27 pp" in table  # kd AUC vs scratch: (0.985 - 0.97233) × 100
    assert "0.8100 ± 0.0100" in table  # scratch accuracy
    assert "teacher" in table and "0.9000" in table
    assert table.count("<tr") == 1 + 3 + 1  # head, three students, teacher


# --------------------------------------------------------------------------- history, objective, summary


def test_history_axis_is_named_after_the_objective_with_integer_ticks(study) -> None:
    fig = history_figure(trial_points(study.trials), study_objective(study))
    assert fig.layout.yaxis.title.text == "validation accuracy"
    assert "validation accuracy" in fig.layout.title.text and "history" in fig.layout.title.text.lower()
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    best = _traces(fig)["best so far"]
    assert list(best.y) == sorted(best.y) and best.y[-1] == 0.85
    assert sum(len(t.x) for t in fig.data if t.name != "best so far") == 9  # completed trials only
    auc = history_figure(trial_points(study.trials), "auc")
    assert auc.layout.yaxis.title.text == "validation AUC"


def test_history_has_automatic_ticks_for_large_studies() -> None:
    study = make_study(_many_kd_trials(30), final=None)
    assert history_figure(trial_points(study.trials), "accuracy").layout.xaxis.dtick is None


def test_study_objective_from_spec_or_final_comparison() -> None:
    assert study_objective(make_study(TRIALS[:1], final=None, objective="auc")) == "auc"
    assert study_objective(make_study(TRIALS[:1], final={**FINAL, "objective": "auc"}, objective=None)) == "auc"
    assert study_objective(make_study(TRIALS[:1], final=None, objective=None)) is None


def test_summary_names_the_metric_of_the_best_trial(study) -> None:
    rows = dict(summary_rows(study))
    assert rows["best trial (val)"] == "#1 kd temperature=4, alpha=0.5: val accuracy 0.8500"
    assert rows["objective"] == "validation accuracy (maximized)"
    assert "+4.00 pp" in rows["best kd (test, 3 seeds)"]
    text = summary_text(study)
    assert "objective 0." not in text and "val accuracy 0.8500" in text
    auc_study = make_study(TRIALS, final=None, objective="auc")
    assert "val AUC 0.8500" in dict(summary_rows(auc_study))["best trial (val)"]


# --------------------------------------------------------------------------- the page


def _figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(figure-\d+)"', page)


def test_write_report_writes_every_figure(study, tmp_path: Path) -> None:
    path = write_report(study, tmp_path / "sub" / "report.html")
    page = path.read_text()
    # AUC vs T, accuracy vs T, feature weight, history, final comparison.
    assert _figure_ids(page) == [f"figure-{i}" for i in range(5)]
    for piece in ('<table id="summary">', 'id="best-per-method"', 'id="final-comparison"', 'name="viewport"'):
        assert piece in page
    assert "validation</b> split" in page and "test</b> split" in page  # the validation-vs-test note
    assert page.count('<section class="figure">') == 5
    assert page.count("plotly.js v") >= 1  # plotly's JS is embedded (works offline)


def test_write_report_without_feature_weight_methods_or_final(tmp_path: Path) -> None:
    kd_only = make_study([t for t in TRIALS if t[0] == "kd"], final=None)
    page = write_report(kd_only, tmp_path / "report.html").read_text()
    assert _figure_ids(page) == ["figure-0", "figure-1", "figure-2"]  # AUC vs T, accuracy vs T, history
    assert 'id="final-comparison"' not in page and 'id="best-per-method"' in page
    empty = optuna.create_study(study_name="empty")
    page = write_report(empty, tmp_path / "empty.html").read_text()
    assert _figure_ids(page) == [] and '<table id="summary">' in page


def test_cost_table_lists_teacher_and_student_in_report_and_summary():
    from kdsearch.report.page import cost_lines, cost_table

    row = {"params": 206010, "size_mb": 0.83, "flops": 1_234_567, "latency_ms": 0.4, "throughput": 9000.0}
    final = {"cost": {"teacher (bn_cnn)": {**row, "params": 421834}, "student (light_nn)": row}}
    html_table = cost_table(typed(final))
    assert 'id="cost"' in html_table and "421,834" in html_table and "206,010" in html_table
    lines = dict(cost_lines(typed(final)))
    assert lines["student (light_nn)"].startswith("parameters 206,010, size (MB) 0.83, FLOPs / image 1,234,567")
    assert cost_table(typed({})) == "" and cost_lines(typed({})) == []


def test_consistent_winner_is_measured_against_the_augmented_scratch():
    from kdsearch.report.page import final_stats

    def runs(acc):
        return [{"seed": 1, "accuracy": acc, "auc": 0.9}, {"seed": 2, "accuracy": acc, "auc": 0.9}]

    final = {
        "students": [
            {
                "label": "best kd",
                "method": "kd",
                "params": {},
                "trial": 3,
                "teacher_mode": "consistent",
                "runs": runs(0.85),
            },
            {
                "label": "best dkd",
                "method": "dkd",
                "params": {},
                "trial": 4,
                "teacher_mode": "cached",
                "runs": runs(0.84),
            },
            {
                "label": "scratch",
                "method": "scratch",
                "params": {},
                "trial": None,
                "teacher_mode": "cached",
                "runs": runs(0.80),
            },
            {
                "label": "scratch (augmented)",
                "method": "scratch",
                "params": {},
                "trial": None,
                "teacher_mode": "consistent",
                "runs": runs(0.82),
            },
        ]
    }
    by_label = {s.label: s for s in final_stats(typed(final))}
    assert by_label["best kd"].accuracy_vs_scratch_pp == pytest.approx(3.0)
    assert by_label["best dkd"].accuracy_vs_scratch_pp == pytest.approx(4.0)
    assert by_label["scratch (augmented)"].accuracy_vs_scratch_pp is None


# --------------------------------------------------------------------------- paired differences, baselines, re-runs

PSEUDO = {
    "label": "pseudo-label",
    "method": "pseudo_label",
    "params": {},
    "trial": None,
    "runs": [
        {"seed": 0, "accuracy": 0.81, "auc": 0.971},
        {"seed": 1, "accuracy": 0.84, "auc": 0.976},
        {"seed": 2, "accuracy": 0.80, "auc": 0.973},
    ],
}


def test_differences_are_paired_by_seed_with_a_t_interval() -> None:
    stats = {s.label: s for s in final_stats(typed(FINAL))}
    kd, cosine = stats["best kd"].vs_scratch["accuracy"], stats["best cosine"].vs_scratch["accuracy"]
    # kd - scratch per seed: 0.04, 0.04, 0.04 -> no spread, the interval is the point
    assert kd.mean == pytest.approx(0.04) and kd.std == pytest.approx(0.0, abs=1e-12) and kd.significant
    # cosine - scratch per seed: 0.00, -0.01, +0.01 -> mean 0, std 0.01, half-width t(0.975, 2) * 0.01 / sqrt(3)
    half = 4.3027 * 0.01 / math.sqrt(3)
    assert cosine.mean == pytest.approx(0.0, abs=1e-12) and cosine.std == pytest.approx(0.01)
    assert (cosine.low, cosine.high) == (pytest.approx(-half), pytest.approx(half)) and not cosine.significant
    assert stats["scratch"].vs_scratch is None
    table = final_table(typed(FINAL))
    assert "<b>+4.00 pp</b>" in table and "✓" in table  # significant: bold and ticked
    assert f"[{-half * 100:+.2f}, {half * 100:+.2f}]" in table  # cosine: [-2.48, +2.48], not ticked
    rows = dict(summary_rows(make_study()))
    # two students against scratch: Holm-corrected (kd's p is 0: no spread)
    assert (
        "vs scratch: accuracy +4.00 pp [95% CI +4.00, +4.00; Holm p 0.000, significant]"
        in rows["best kd (test, 3 seeds)"]
    )
    assert "accuracy +0.00 pp [95% CI -2.48, +2.48; Holm p 1.000]" in rows["best cosine (test, 3 seeds)"]


def test_pseudo_label_is_a_baseline_and_each_distilled_student_is_compared_with_it() -> None:
    final = {**FINAL, "students": [*FINAL["students"], PSEUDO]}
    stats = {s.label: s for s in final_stats(typed(final))}
    assert [s.label for s in final_stats(typed(final))][-2:] == ["pseudo-label", "scratch"]  # the baselines last
    kd = stats["best kd"].vs_pseudo_label["accuracy"]  # 0.84-0.81, 0.86-0.84, 0.85-0.80
    assert kd.mean == pytest.approx((0.03 + 0.02 + 0.05) / 3) and kd.n == 3
    assert stats["pseudo-label"].vs_pseudo_label is None and stats["pseudo-label"].vs_scratch is not None
    table = final_table(typed(final))
    assert "<th class=num>Δ vs pseudo-label</th>" in table and "Δ vs untuned KD" not in table  # no such baseline
    assert table.count("<tr") == 1 + 4 + 1
    # kd - pseudo-label AUC per seed: 0.009, 0.014, 0.012 -> mean +1.17 pp; every row has every column
    assert "+1.17 pp" in table and len({row.count("<td") for row in table.split("<tr")[2:]}) == 1
    study = make_study(final=final)
    rows = dict(summary_rows(study))
    assert "; vs pseudo-label: accuracy +3.33 pp" in rows["best kd (test, 3 seeds)"]
    assert rows["pseudo-label (test, 3 seeds)"].count("vs scratch") == 1


def test_one_seed_gives_no_interval() -> None:
    one = {**FINAL, "seeds": [0], "students": [{**s, "runs": s["runs"][:1]} for s in FINAL["students"]]}
    d = {s.label: s for s in final_stats(typed(one))}["best kd"].vs_scratch["accuracy"]
    assert d.n == 1 and d.low is None and not d.significant
    assert "[n/a: 1 seed]" in final_table(typed(one))
    assert "[95% CI n/a: 1 seed]" in dict(summary_rows(make_study(final=one)))["best kd (test, 1 seed)"]


def test_a_re_run_final_comparison_is_labelled(tmp_path: Path) -> None:
    rerun = {**FINAL, "run": 2, "earlier_runs_trials": [5]}
    page = write_report(make_study(final=rerun), tmp_path / "report.html").read_text()
    assert "Final comparison (test split) — re-run 2" in page and "after 5 completed trial(s)" in page
    assert dict(summary_rows(make_study(final=rerun)))["final comparison"].startswith("re-run 2")
    first = write_report(make_study(), tmp_path / "first.html").read_text()
    assert "re-run" not in first


def test_param_maps_for_logit_methods_with_enough_trials() -> None:
    lskd = [
        ("lskd", {"temperature": t, "alpha": a}, 0.80 + 0.01 * i, 0.97, TrialState.COMPLETE)
        for i, (t, a) in enumerate([(1.0, 0.001), (2.0, 0.01), (8.0, 0.1), (16.0, 0.5), (4.0, 0.003)])
    ]
    study = make_study(TRIALS + lskd, final=None)
    fig = param_map_figure(trial_points(study.trials), "accuracy")
    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 1  # lskd has 7 completed trials; kd 3 and dkd 1 are too few
    assert [a.text for a in fig.layout.annotations] == ["lskd: T × alpha"]
    cells = [v for row in heatmaps[0].z for v in row if v is not None]
    assert max(cells) == pytest.approx(0.84)  # the best lskd trial's cell holds its value
    points = next(t for t in fig.data if isinstance(t, go.Scatter))
    assert len(points.x) == 7 and min(points.y) == pytest.approx(math.log10(0.001))  # alpha on a log axis
    assert param_map_figure(trial_points(make_study(final=None).trials), "accuracy") is None


def test_the_objectives_figure_comes_first(tmp_path: Path) -> None:
    for objective, first, second in (("accuracy", "accuracy", "AUC"), ("auc", "AUC", "accuracy")):
        page = write_report(make_study(objective=objective), tmp_path / f"{objective}.html").read_text()
        assert page.index(f"Validation {first} vs temperature") < page.index(f"Validation {second} vs temperature")


def test_the_stored_final_comparison_reads_back_typed_and_a_damaged_one_is_one_line() -> None:
    from kdsearch.errors import KdsearchError

    study = make_study()
    final = FinalComparison.read(study)
    assert final == typed(FINAL) and final.teacher.accuracy == 0.90 and final.students[0].runs[2].seed == 2
    assert final.students[0].teacher_mode == "cached" and final.run == 1  # fields written later: defaults
    final.save(study)  # what the search writes reads back the same
    assert FinalComparison.read(study) == final
    assert FinalComparison.read(make_study(final=None)) is None
    damaged = make_study(final={**FINAL, "students": [{"label": "best kd", "runs": "?"}]})
    with pytest.raises(KdsearchError, match="stored final comparison .* is not readable.*kdsearch report"):
        summary_rows(damaged)
    assert FinalComparison.next_run_of(damaged) == (2, [])  # it scored the test split all the same
    assert FinalComparison.next_run_of(make_study(final=None)) == (1, [])
    assert FinalComparison.next_run_of(make_study(final={**FINAL, "run": 2, "earlier_runs_trials": [5]})) == (3, [5, 9])
    bad_teacher = make_study()
    bad_teacher.set_user_attr("teacher", {"val_accuracy": "high"})
    with pytest.raises(KdsearchError, match="teacher scores .* not readable.*--study NEW_NAME"):
        summary_rows(bad_teacher)


UNTUNED = {
    "label": "untuned kd (T=4, α=0.1)",
    "method": "kd",
    "params": {"temperature": 4.0, "alpha": 0.1},
    "trial": None,
    "baseline": "untuned_kd",
    "runs": [
        {"seed": 0, "accuracy": 0.82, "auc": 0.975},
        {"seed": 1, "accuracy": 0.83, "auc": 0.980},
        {"seed": 2, "accuracy": 0.83, "auc": 0.982},
    ],
}


def test_untuned_kd_is_a_baseline_each_tuned_student_is_paired_with() -> None:
    final = {**FINAL, "students": [*FINAL["students"], UNTUNED]}
    stats = {s.label: s for s in final_stats(typed(final))}
    untuned = stats["untuned kd (T=4, α=0.1)"]
    assert untuned.method == "untuned_kd" and untuned.vs_untuned_kd is None and untuned.vs_scratch is not None
    kd = stats["best kd"].vs_untuned_kd["accuracy"]  # 0.84-0.82, 0.86-0.83, 0.85-0.83
    assert kd.mean == pytest.approx((0.02 + 0.03 + 0.02) / 3) and kd.n == 3
    assert [s.label for s in final_stats(typed(final))][-2:] == ["untuned kd (T=4, α=0.1)", "scratch"]
    table = final_table(typed(final))
    assert "<th class=num>Δ vs untuned KD</th>" in table and "+2.33 pp" in table
    assert len({row.count("<td") for row in table.split("<tr")[2:]}) == 1  # every row has every column
    rows = dict(summary_rows(make_study(final=final)))
    assert "; vs untuned KD: accuracy +2.33 pp" in rows["best kd (test, 3 seeds)"]
    assert "vs untuned KD" not in rows["scratch (test, 3 seeds)"]
    assert typed(final).students[-1].is_baseline  # not shipped as a distilled student


def test_several_rows_against_one_baseline_are_holm_corrected_and_the_report_says_so() -> None:
    stats = {s.label: s for s in final_stats(typed(FINAL))}
    kd, cosine = stats["best kd"].vs_scratch, stats["best cosine"].vs_scratch
    for metric in ("accuracy", "auc"):
        ps = [kd[metric].p, cosine[metric].p]
        assert kd[metric].holm_p is not None and cosine[metric].holm_p is not None
        assert sorted([kd[metric].holm_p, cosine[metric].holm_p]) == pytest.approx(sorted(holm_adjusted(ps)))
    one = {**FINAL, "students": [s for s in FINAL["students"] if s["label"] != "best cosine"]}
    alone = {s.label: s for s in final_stats(typed(one))}["best kd"].vs_scratch["accuracy"]
    assert alone.holm_p is None  # one row against scratch: nothing to correct
    page_note = holm_note(final_stats(typed(FINAL)))
    assert page_note and "Holm-corrected" in page_note and "scratch" in page_note
    assert holm_note(final_stats(typed(one))) is None


def _trial(values: list[float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=values[-1], intermediate_values={i + 1: v for i, v in enumerate(values)}, params={}, distributions={}
    )


def test_a_budget_too_small_to_mean_anything_is_said_with_the_fix(tmp_path: Path) -> None:
    from kdsearch.report.content import budget_warning

    learning = [_trial([0.2, 0.25, 0.31]), _trial([0.1, 0.18]), _trial([0.3, 0.3, 0.305])]
    warning = budget_warning(learning, typed(FINAL))
    assert warning and "2 of 3 completed trials raised their validation score by 1 pp or more" in warning
    assert "scratch reaches test accuracy 0.81 against the teacher's 0.90" in warning
    assert "student.epochs" in warning and "student.lr" in warning
    leveled = [_trial([0.5, 0.8, 0.805]), _trial([0.6, 0.81, 0.80]), _trial([0.2, 0.3, 0.35])]
    assert budget_warning(leveled, typed(FINAL)) is None  # only 1 of 3 still rising
    assert budget_warning([_trial([0.2]), _trial([0.3])], None) is None  # one epoch each: nothing to tell from
    assert budget_warning([_trial([0.1, 0.5])], None) is None  # one trial is not a pattern
    study = make_study()
    for values in ([0.2, 0.25, 0.31], [0.1, 0.18]):
        study.add_trial(
            create_trial(
                params={"method": "kd"},
                distributions={"method": CategoricalDistribution(METHODS)},
                value=values[-1],
                intermediate_values=dict(enumerate(values, start=1)),
                user_attrs={"accuracy": values[-1], "auc": 0.9},
            )
        )
    page = write_report(study, tmp_path / "r.html").read_text()
    assert "the students were still learning when they stopped" in page
    assert "the students were still learning" not in write_report(make_study(), tmp_path / "s.html").read_text()


def test_best_per_bin_on_points_placed_by_hand() -> None:
    from kdsearch.report.content import BinBest

    points = [(1.0, 0.1, 0), (1.5, 0.3, 1), (3.0, 0.2, 2), (8.0, 0.5, 3), (7.9, 0.6, 4)]
    # 2 log bins over [1, 8]: edges 1, sqrt(8), 8
    two = best_per_bin(points, bins=2)
    assert [(b.x, b.y, b.number, b.count) for b in two] == [(1.5, 0.3, 1, 2), (7.9, 0.6, 4, 3)]
    assert two[0].low == 1.0 and two[0].high == pytest.approx(8**0.5) and two[1].low == pytest.approx(8**0.5)
    assert two[1].high == pytest.approx(8.0)
    # the default 8 bins (edges 2**(3i/8)): 1 → bin 0, 1.5 → 1, 3 → 4, 7.9 and the top x 8 → 7; empty bins left out
    eight = best_per_bin(points)
    assert [(b.number, b.count) for b in eight] == [(0, 1), (1, 1), (2, 1), (4, 2)]
    assert [b.low for b in eight] == pytest.approx([1.0, 2 ** (3 / 8), 2 ** (12 / 8), 2 ** (21 / 8)])
    assert [b.high for b in eight] == pytest.approx([2 ** (3 / 8), 2 ** (6 / 8), 2 ** (15 / 8), 8.0])
    # every point at one x: one bin holding them all, at that x
    assert best_per_bin([(2.0, 0.1, 0), (2.0, 0.4, 1), (2.0, 0.2, 2)]) == [BinBest(2.0, 0.4, 1, 3, 2.0, 2.0)]
    assert best_per_bin([]) == []
