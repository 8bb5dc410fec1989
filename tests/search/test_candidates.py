"""Candidate students ([[student.candidates]]): the spec, the front on hand-made points, the budgets, the
per-student pruner, the cost timing, and a tiny study end to end (costs stored, per-size scratch, exports
per candidate, the report's front, a changed candidate list refused on resume)."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.config.load import spec_from_dict
from kdsearch.errors import KdsearchError
from kdsearch.report.content import final_stats, front_headline, front_rows
from kdsearch.search.front import dominated_by, front, hypervolume, over_budget
from kdsearch.search.pruners import GroupMedianPruner, build_pruner
from kdsearch.search.results import (
    CandidateRuns,
    FinalComparison,
    Scores,
    SeedRun,
    StudentCost,
    StudentCosts,
)

runner = CliRunner()

CANDIDATES = """
[[student.candidates]]
name = "small"
arch_args = {{ width = 0.25 }}
[[student.candidates]]
name = "big"
arch_args = {{ width = {big} }}
"""


# --------------------------------------------------------------------------- the spec


def test_candidates_resolve_against_the_student_section():
    spec = spec_from_dict(
        {
            "student": {
                "epochs": 3,
                "candidates": [
                    {"name": "w05", "arch_args": {"width": 0.5}},
                    {"name": "r18", "arch": "resnet18"},
                ],
            }
        }
    )
    resolved = spec.student.candidate_specs()
    assert list(resolved) == ["w05", "r18"]
    assert (resolved["w05"].arch, resolved["w05"].arch_args, resolved["w05"].epochs) == ("light_nn", {"width": 0.5}, 3)
    assert (resolved["r18"].arch, resolved["r18"].arch_args, resolved["r18"].candidates) == ("resnet18", {}, [])


@pytest.mark.parametrize(
    "candidates, message",
    [
        ([{"name": "a"}, {"name": "a"}], "the name 'a' is used twice"),
        ([{"name": "a"}], "list two or more"),
        ([{"name": "a b"}, {"name": "c"}], "use letters, digits"),
        ([{"name": "a", "arch": "resnet18", "arch_args": {"width": 2}}, {"name": "c"}], "candidate 'a': arch_args"),
        ([{"name": "a", "arch_args": {"width": 0}}, {"name": "c"}], "channel multiplier > 0"),
        ([{"name": "a", "arch_args": {"depth": 2}}, {"name": "c"}], "takes only width"),
        ([{"name": "a", "arch": "torchscript"}, {"name": "c"}], "candidate 'a': 'torchscript' is for a teacher"),
    ],
)
def test_a_bad_candidate_list_is_one_message_naming_it(candidates, message):
    with pytest.raises(KdsearchError, match=message):
        spec_from_dict({"student": {"candidates": candidates}})


def test_constraints_without_candidates_are_refused():
    with pytest.raises(KdsearchError, match="search.constraints choose among"):
        spec_from_dict({"search": {"constraints": {"params": 1e5}}})
    with pytest.raises(KdsearchError, match="constraints"):
        spec_from_dict({"search": {"constraints": {"watts": 3}}})


def test_width_scales_a_seed_net_and_one_is_the_shipped_net():
    from kdsearch.distill.metrics import count_parameters
    from kdsearch.nets.models import build_model

    counts = [count_parameters(build_model("light_nn", 10, 1, 28, args={"width": w})) for w in (0.25, 0.5, 1, 2)]
    assert counts == sorted(counts) and counts[2] == count_parameters(build_model("light_nn", 10, 1, 28)) == 206_010
    assert 10_000 < counts[0] < 20_000 and 700_000 < counts[3] < 900_000


# --------------------------------------------------------------------------- the front and budgets (pure)


def test_front_keeps_what_no_cheaper_candidate_beats():
    points = {
        "a": (1.0, 0.70),  # cheapest
        "b": (2.0, 0.80),
        "c": (3.0, 0.75),  # beaten by b: costlier and worse
        "d": (4.0, 0.90),
        "e": (2.0, 0.80),  # ties b exactly: neither dominates
        "f": (0.5, float("nan")),  # diverged: beaten by any number
        "g": (4.0, 0.85),  # same cost as d, worse
    }
    by = dominated_by(points)
    assert by["c"] == "b" and by["g"] == "d" and by["f"] == "a"
    assert front(points) == ["a", "b", "e", "d"]
    assert front({"x": (1.0, 0.5)}) == ["x"]


def test_hypervolume_is_the_area_the_front_dominates_up_to_the_reference():
    ref = (10.0, 0.5)
    assert hypervolume([], ref) == 0.0
    assert hypervolume([(2.0, 0.9)], ref) == pytest.approx(8 * 0.4)
    # a staircase: (2, 0.7) holds [2, 6) × 0.2, then (6, 0.9) holds [6, 10) × 0.4
    assert hypervolume([(6.0, 0.9), (2.0, 0.7)], ref) == pytest.approx(4 * 0.2 + 4 * 0.4)
    # a dominated point, one beyond the reference cost, one below its value and a NaN add nothing
    noisy = [(6.0, 0.9), (2.0, 0.7), (7.0, 0.8), (11.0, 0.99), (1.0, 0.4), (1.0, float("nan"))]
    assert hypervolume(noisy, ref) == pytest.approx(4 * 0.2 + 4 * 0.4)
    # a better point never lowers it
    assert hypervolume([(6.0, 0.9), (2.0, 0.7), (3.0, 0.85)], ref) > hypervolume([(6.0, 0.9), (2.0, 0.7)], ref)


def _bench_front():
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("bench_front", REPO / "benchmarks" / "bench_front.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_front_benchmark_replays_each_strategy_on_a_table():
    bench = _bench_front()
    students = ["tiny", "mid", "big"]
    points = {}
    for student, method, ti, pi, params in bench.grid_points(students):
        top = {"tiny": 0.70, "mid": 0.80, "big": 0.85}[student] - 0.01 * (ti + pi)
        points[bench.point_key(student, method, ti, pi)] = {
            "student": student,
            "method": method,
            "params": params,
            "accuracy": [top - 0.2, top - 0.05, top],
        }
    costs = {"tiny": {"params": 1e4}, "mid": {"params": 1e5}, "big": {"params": 1e6}}
    table = {"meta": {"students": students, "epochs": 3, "costs": costs}, "points": points}
    reference = bench.reference_point(table, "params")
    assert reference == (pytest.approx(math.log10(2e6)), pytest.approx(min(p["accuracy"][-1] for p in points.values())))
    table_hv = bench.front_hypervolume(
        [{"cost": costs[p["student"]]["params"], "value": p["accuracy"][-1]} for p in points.values()], reference
    )
    for kind in bench.STRATEGIES:
        log = bench.replay(kind, 0, table, 15, "params")
        assert len(log) == 15 and all(1 <= e["epochs"] <= 3 for e in log)
        pruned = [e for e in log if e["value"] is None]
        assert not pruned or kind in ("per_candidate", "tpe_student")  # only the searches with a pruner prune
        assert all(e["epochs"] == 3 for e in log if e["value"] is not None)
        if kind == "per_candidate":  # each trial takes the student with the fewest trials so far
            counts = [sum(e["point"].startswith(s + "/") for e in log) for s in students]
            assert counts == [5, 5, 5]
        xs, ys = bench.trace(log, reference, table_hv)
        assert xs == sorted(xs) and ys == sorted(ys) and 0 < ys[-1] <= 1 + 1e-9


def test_over_budget_names_each_exceeded_cost():
    costs = {
        "small": {"params": 1e4, "onnx_latency_ms": 0.1},
        "big": {"params": 1e6, "onnx_latency_ms": 0.9},
        "no_onnx": {"params": 1e3, "onnx_latency_ms": None},
    }
    out = over_budget(costs, {"params": 5e5, "onnx_latency_ms": 0.5})
    assert set(out) == {"big", "no_onnx"}
    assert "params 1e+06 > 5e+05" in out["big"] and "onnx_latency_ms 0.9 > 0.5" in out["big"]
    assert out["no_onnx"] == "onnx_latency_ms not measured"
    assert over_budget(costs, {}) == {}


def _cost(params: int, onnx: float) -> StudentCost:
    return StudentCost(
        params=params,
        size_mb=params * 4e-6,
        flops=params * 2.0,
        latency_ms=onnx * 2,
        throughput=1e4,
        onnx_latency_ms=onnx,
        arch="light_nn",
    )


def _final(accs: dict[str, tuple[float, float]], teacher: float = 0.90) -> FinalComparison:
    """A hand-made final comparison: name → (distilled, scratch) accuracy over 3 seeds (± 0.01)."""
    students = []
    for i, (name, (distilled, scratch)) in enumerate(accs.items()):
        j = 0.004 * (i + 1)  # each size's scratch seeds spread differently: the paired differences vary
        for label, method, acc, spread in (
            (f"{name}: best kd", "kd", distilled, (-0.01, 0.0, 0.01)),
            (f"{name}: scratch", "scratch", scratch, (-0.01 + j, 0.0, 0.01 - j)),
        ):
            runs = [SeedRun(seed=s, accuracy=acc + d, auc=0.9) for s, d in zip((1, 2, 3), spread)]
            students.append(CandidateRuns(label=label, method=method, student=name, runs=runs))
    costs = StudentCosts(
        hardware="test CPU",
        repeats=5,
        teacher=_cost(400_000, 1.0),
        students={"s": _cost(10_000, 0.1), "m": _cost(50_000, 0.25), "l": _cost(200_000, 0.5)},
    )
    return FinalComparison(
        seeds=[1, 2, 3],
        students=students,
        teacher=Scores(accuracy=teacher, auc=0.95),
        costs=costs,
        front=list(accs),
        within_pp=1.0,
    )


def test_headline_names_the_smallest_student_within_the_margin():
    final = _final({"s": (0.85, 0.80), "m": (0.895, 0.85), "l": (0.91, 0.88)})
    stats = final_stats(final)
    rows = front_rows(final, stats)
    assert [r.student for r in rows] == ["s", "m", "l"]
    assert all(r.distilled.student == r.scratch.student == r.student for r in rows)
    assert rows[1].distilled.vs_scratch["accuracy"].mean == pytest.approx(0.045)  # its own size's scratch
    headline = front_headline(final, stats)
    assert headline == (
        "smallest student within 1 pp of the teacher's test accuracy: m (8.0× fewer parameters, 4.0× lower ONNX "
        "latency than the teacher)"
    )
    none = _final({"s": (0.85, 0.80), "m": (0.87, 0.85)})
    assert "no candidate student is within 1 pp" in front_headline(none, final_stats(none))
    assert "closest: m, 3.00 pp below" in front_headline(none, final_stats(none))


def test_comparisons_with_scratch_are_holm_corrected_across_sizes():
    final = _final({"s": (0.85, 0.80), "m": (0.895, 0.85), "l": (0.91, 0.88)})
    distilled = [s for s in final_stats(final) if s.method == "kd"]
    p = sorted(s.vs_scratch["accuracy"].p for s in distilled)
    holm = sorted(s.vs_scratch["accuracy"].holm_p for s in distilled)
    assert len(set(p)) == 3 and 0 < p[0] < p[2] < 1
    assert holm[0] == pytest.approx(min(1.0, 3 * p[0]))  # the smallest p times the family's size
    assert holm[2] == pytest.approx(max(holm[1], min(1.0, p[2])))  # Holm's step-down keeps the order


# --------------------------------------------------------------------------- pruning and timing


def _study_with_students(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    dists = {
        "student": optuna.distributions.CategoricalDistribution(["small", "big"]),
        "method": optuna.distributions.CategoricalDistribution(["kd"]),
    }
    for student, value in (("big", 0.9), ("big", 0.88), ("small", 0.6), ("small", 0.62)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"student": student, "method": "kd"},
                distributions=dists,
                value=value,
                intermediate_values={1: value},
            )
        )
    return study


@pytest.mark.parametrize("name", ["median", "median_per_method"])
def test_a_small_student_is_pruned_only_against_its_own_size(name):
    pruner = build_pruner(name, startup_trials=1, warmup_epochs=0, epochs=2, per_student=True)
    assert isinstance(pruner, GroupMedianPruner) and "student" in pruner.group_by
    study = _study_with_students(pruner)
    trial = study.ask(
        {
            "student": optuna.distributions.CategoricalDistribution(["small", "big"]),
            "method": optuna.distributions.CategoricalDistribution(["kd"]),
        }
    )
    trial.report(0.63 if trial.params["student"] == "small" else 0.95, 1)
    assert not trial.should_prune()  # beats its own size's median; a median over both sizes would prune small
    plain = build_pruner("median", startup_trials=1, warmup_epochs=0, epochs=2)
    assert isinstance(plain, optuna.pruners.MedianPruner)


def test_the_balanced_sampler_gives_each_student_its_turn_and_tpe_the_rest():
    from kdsearch.search.samplers import BalancedStudentSampler

    students = ["a", "b", "c"]
    base = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True, n_startup_trials=2)
    study = optuna.create_study(direction="maximize", sampler=BalancedStudentSampler(base, students))
    running = study.ask()  # a trial still running counts, so parallel workers share the turns
    running.suggest_categorical("student", students)
    picked = [running.params["student"]]
    for _ in range(8):
        trial = study.ask()
        picked.append(trial.suggest_categorical("student", students))
        t = trial.suggest_float("temperature", 0.5, 20.0, log=True)
        study.tell(trial, {"a": 0.5, "b": 0.7, "c": 0.9}[picked[-1]] - abs(math.log(t / 4)) / 100)
    assert picked == ["a", "b", "c"] * 3  # in turn, though c scores best: TPE would sample mostly c
    temperatures = [t.params["temperature"] for t in study.trials if "temperature" in t.params]
    assert len(set(temperatures)) == len(temperatures)  # the rest is sampled (by TPE), not fixed
    with pytest.raises(ValueError):
        BalancedStudentSampler(base, [])


def test_cost_timing_is_the_median_of_repeats_after_warm_up():
    from kdsearch.ship.costs import median_seconds

    calls = []
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0, 30.0, 35.0, 40.0, 49.0])  # durations 1, 3, 2, 5, 9

    def run() -> None:
        calls.append(1)

    assert median_seconds(run, warmup=2, repeats=5, clock=lambda: next(ticks)) == 3.0
    assert len(calls) == 7  # 2 untimed warm-ups, then 5 timed runs
    with pytest.raises(ValueError):
        median_seconds(run, repeats=0)


# --------------------------------------------------------------------------- a tiny study end to end


def test_a_study_over_two_students_shows_their_front_and_ships_each(write_spec, tmp_path):
    spec = write_spec("cands", epochs=1, extra=CANDIDATES.format(big=1))
    result = runner.invoke(app, ["run", "--spec", str(spec), "--trials", "4"])
    assert result.exit_code == 0, result.output
    assert "students: each trial takes in turn one of 2: small (13k params" in result.output
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    study = optuna.load_study(study_name="cands", storage=storage)
    sampled = sorted(t.params["student"] for t in study.trials)
    assert sampled == ["big", "big", "small", "small"] and all("method" in t.params for t in study.trials)
    costs = StudentCosts.read(study)
    assert set(costs.students) == {"small", "big"} and costs.teacher is not None
    assert costs.students["small"].params < costs.students["big"].params
    assert all(c.onnx_latency_ms > 0 and c.latency_ms > 0 for c in costs.students.values())
    final = FinalComparison.read(study)
    assert final.front and set(final.front) | set(final.off_front) == {"small", "big"}
    for name in final.front:  # each front member: its best trial and a scratch of its own architecture
        mine = [s for s in final.students if s.student == name]
        assert {s.method for s in mine} >= {"scratch"} and any(s.trial is not None for s in mine)
        card = json.loads((tmp_path / "run" / "students" / name / "card.json").read_text())
        assert card["candidate"] == name and card["arch_args"] == ({"width": 0.25} if name == "small" else {"width": 1})
        assert card["cost"]["params"] == costs.students[name].params
        assert (tmp_path / "run" / "students" / name / "student.onnx").is_file()
    assert not any(s.method in ("pseudo_label",) for s in final.students)
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="front"' in report and "Choosing the student" in report and 'id="best-per-student"' in report
    assert "best trial of each candidate student on the validation front" in report
    assert "validation front (best trial of each)" in report and "dominated trials" in report
    assert "smallest student within" in result.output or "no candidate student is within" in result.output

    # kdsearch export retrains a trial with its own candidate's architecture
    small = next(t for t in study.trials if t.params["student"] == "small" and t.state.name == "COMPLETE")
    out = tmp_path / "exported"
    exported = runner.invoke(app, ["export", "--spec", str(spec), "--trial", str(small.number), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    card = json.loads((out / "card.json").read_text())
    assert card["candidate"] == "small" and card["arch_args"] == {"width": 0.25}
    assert card["parameters"] == card["cost"]["params"] == costs.students["small"].params

    # a resume with another candidate list is refused before anything trains (the trials would not compare)
    changed = write_spec("cands", epochs=1, extra=CANDIDATES.format(big=2))
    again = runner.invoke(app, ["run", "--spec", str(changed), "--trials", "1"])
    assert again.exit_code == 2 and "student.candidates" in again.output
    assert len(optuna.load_study(study_name="cands", storage=storage).trials) == len(study.trials)


def test_constraints_keep_a_candidate_out_of_every_trial(write_spec, tmp_path):
    spec = write_spec("budget", epochs=1, extra=CANDIDATES.format(big=1) + "[search.constraints]\nparams = 50000\n")
    # the [search] table is already defined: constraints go in as a dotted key instead
    text = spec.read_text().replace("[search.constraints]\nparams = 50000\n", "")
    text = text.replace("[search]\n", "[search]\nconstraints = { params = 50000 }\n")
    spec.write_text(text)
    result = runner.invoke(app, ["run", "--spec", str(spec), "--trials", "2"])
    assert result.exit_code == 0, result.output
    assert "student big: never sampled, over search.constraints (params 2.06e+05 > 5e+04)" in result.output
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert {t.params["student"] for t in study.trials} == {"small"}
    final = FinalComparison.read(study)
    assert final.front == ["small"] and "over search.constraints" in final.off_front["big"]
    assert not math.isnan(final.teacher.accuracy)


def test_the_deploy_study_is_not_told_about_final_students_which_candidates_do_not_use():
    from helpers import REPO

    from kdsearch.config.load import defaults_unlike_the_default_study

    lines = defaults_unlike_the_default_study(
        REPO / "studies" / "fashion_mnist_deploy.toml", [], REPO / "studies" / "fashion_mnist.toml"
    )
    assert not any(line.startswith("final.students") for line in lines)


def test_costs_are_measured_once_per_study_and_then_read_back(monkeypatch):
    import types

    import torch

    from kdsearch.search import objective
    from kdsearch.ship import costs as costs_module

    measured = []

    def fake_measure(model, sample, **kw):
        measured.append(kw.get("arch_args"))
        return _cost(1000 * (len(measured)), 0.1)

    monkeypatch.setattr(costs_module, "measure_cost", fake_measure)
    monkeypatch.setattr(objective, "fresh_student", lambda data: torch.nn.Linear(1, 1))
    student = types.SimpleNamespace(arch="light_nn", arch_args={})
    variant = types.SimpleNamespace(spec=types.SimpleNamespace(student=student))
    data = types.SimpleNamespace(
        students={"a": variant, "b": variant},
        for_student=lambda name: variant,
        val=types.SimpleNamespace(x=torch.zeros(2, 1, 4, 4)),
        device=torch.device("cpu"),
        spec=types.SimpleNamespace(teacher=types.SimpleNamespace(arch="bn_cnn", arch_args={})),
        teacher=types.SimpleNamespace(model=torch.nn.Linear(1, 1)),
    )
    study = optuna.create_study()
    said: list[str] = []
    first = costs_module.study_costs(study, data, echo=said.append)
    assert len(measured) == 3 and set(first.students) == {"a", "b"} and first.teacher is not None
    assert StudentCosts.read(study) == first and said and "measuring 2 candidate students" in said[0]
    again = costs_module.study_costs(study, data, echo=said.append)  # a resume or another worker
    assert again == first and len(measured) == 3 and len(said) == 1  # read back: nothing measured, nothing said


def test_a_multi_objective_study_trains_every_trial_to_the_end_and_finds_the_same_front(write_spec, tmp_path):
    spec = write_spec("mo", epochs=2, extra=CANDIDATES.format(big=1))
    text = spec.read_text().replace("[search]\n", '[search]\nobjectives = ["accuracy", "params"]\nstrategy = "motpe"\n')
    spec.write_text(text)
    result = runner.invoke(app, ["run", "--spec", str(spec), "--trials", "4"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert "search: multi-objective (motpe) on validation accuracy and params" in result.output
    assert "students: each trial samples one of 2" in result.output
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "params"]  # the dashboard names both axes
    costs = StudentCosts.read(study)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4  # nothing is pruned: every trial ran both epochs
    for t in done:
        assert t.values[0] == t.user_attrs["accuracy"] and t.values[1] == costs.students[t.params["student"]].params
        assert len(t.user_attrs["curve"]) == 2 and not t.intermediate_values
    final = FinalComparison.read(study)
    assert final.front_cost == "params" and final.front and set(final.front) | set(final.off_front) == {"small", "big"}
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Choosing the student" in report and 'id="best-per-student"' in report
    assert "parameters (minimized): a multi-objective study, no pruning" in report
    # the objectives set search.objective and final.cost; a pruner asked for with a multi-objective study is refused
    bad = spec.read_text().replace('strategy = "motpe"\n', 'strategy = "nsga2"\npruner = "median"\n', 1)
    bad = bad.replace('pruner = "none"\n', "", 1)
    spec.write_text(bad)
    refused = runner.invoke(app, ["run", "--spec", str(spec), "--trials", "1"])
    assert refused.exit_code == 2 and "cannot prune" in refused.output and "Traceback" not in refused.output
