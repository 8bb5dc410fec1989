"""The search is fair and says how sure it is: per-method pruning, methods refused where they degenerate,
DKD's warm-up, the pseudo-label baseline, paired statistics, constant liar and a named objective."""

from __future__ import annotations

import math
import statistics
import warnings

import optuna
import pytest
import torch
import torch.nn.functional as F

from kdsearch.config.load import spec_from_dict
from kdsearch.distill.methods import DKD, DistillBatch, nckd_term, pseudo_label_loss, unusable_methods, warmup_factor
from kdsearch.errors import KdsearchError
from kdsearch.search.objective import methods_for_task, trial_params
from kdsearch.search.pruners import PerMethodMedianPruner, build_pruner
from kdsearch.search.stats import paired_by_seed, paired_difference, t_quantile_975
from kdsearch.search.study import create_study, make_sampler

# --------------------------------------------------------------------------- per-method median


def _study_with(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """kd trials that start fast (0.8 after epoch 1) and dkd trials that start slow (0.3), both ending near 0.85."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for method, first in (("kd", 0.8), ("kd", 0.82), ("dkd", 0.3), ("dkd", 0.32)):
        study.enqueue_trial({"method": method})
        trial = study.ask()
        trial.suggest_categorical("method", ["kd", "dkd"])
        trial.report(first, 1)
        trial.report(0.85, 2)
        study.tell(trial, 0.85)
    return study


def _new_trial_pruned(study: optuna.Study, method: str, first: float) -> bool:
    study.enqueue_trial({"method": method})
    trial = study.ask()
    trial.suggest_categorical("method", ["kd", "dkd"])
    trial.report(first, 1)
    return trial.should_prune()


def test_per_method_median_compares_a_trial_only_with_its_own_method():
    # a slow-starting dkd trial (0.31 after epoch 1) is below the all-trials median (0.56) but at its method's
    per_method = _study_with(PerMethodMedianPruner(n_startup_trials=2, n_warmup_steps=1))
    assert not _new_trial_pruned(per_method, "dkd", 0.31)
    assert _new_trial_pruned(per_method, "dkd", 0.2)  # below dkd's own median (0.31)
    assert _new_trial_pruned(per_method, "kd", 0.7)  # below kd's (0.81), though far above the all-trials median
    pooled = _study_with(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    assert _new_trial_pruned(pooled, "dkd", 0.31)  # the pooled median kills the slow starter
    assert not _new_trial_pruned(pooled, "kd", 0.7)


def test_per_method_median_edges_defaults_and_bad_settings():
    study = _study_with(PerMethodMedianPruner(n_startup_trials=0, n_warmup_steps=0))
    assert _new_trial_pruned(study, "dkd", 0.1)  # no start-up asked: two completed dkd trials are enough
    one = optuna.create_study(direction="maximize", pruner=PerMethodMedianPruner(n_startup_trials=0))
    one.enqueue_trial({"method": "kd"})
    first = one.ask()
    first.suggest_categorical("method", ["kd", "dkd"])
    first.report(0.8, 1)
    one.tell(first, 0.8)
    assert _new_trial_pruned(one, "kd", 0.1)  # one completed peer is a median
    # a step no peer reported: nothing to compare with, not pruned; only NaNs so far: a diverged trial, pruned
    unseen = _study_with(PerMethodMedianPruner(n_startup_trials=1))
    unseen.enqueue_trial({"method": "kd"})
    trial = unseen.ask()
    trial.suggest_categorical("method", ["kd", "dkd"])
    trial.report(0.0, 7)
    assert not trial.should_prune()
    assert _new_trial_pruned(_study_with(PerMethodMedianPruner(n_startup_trials=1)), "kd", float("nan"))
    default = PerMethodMedianPruner()
    assert (default.n_startup_trials, default.n_warmup_steps) == (5, 0)
    for bad in ({"n_startup_trials": -1}, {"n_warmup_steps": -1}):
        with pytest.raises(ValueError, match="must be >= 0"):
            PerMethodMedianPruner(**bad)


def test_per_method_median_waits_for_startup_trials_of_that_method():
    study = _study_with(PerMethodMedianPruner(n_startup_trials=3, n_warmup_steps=1))  # each method has only 2
    assert not _new_trial_pruned(study, "dkd", 0.0)


@pytest.mark.parametrize("name", ["median_per_method", "median", "successive_halving", "hyperband", "none"])
def test_every_pruner_of_the_spec_is_built(name):
    spec = spec_from_dict({"search": {"pruner": name}})
    assert isinstance(build_pruner(name, startup_trials=5, warmup_epochs=0, epochs=5), optuna.pruners.BasePruner)
    assert spec.search.pruner == name


@pytest.mark.parametrize("name", ["median_per_method", "median"])
def test_the_median_pruners_honour_warm_up_and_start_up(name):
    """warmup_epochs = 1: a trial reports epochs as steps 1, 2, ...; it may be pruned from epoch 2 on, and only
    once ``startup_trials`` trials have completed."""
    method = {"method": optuna.distributions.CategoricalDistribution(["kd"])}

    def bad_trial_pruned_at(completed: int) -> list[int]:
        study = optuna.create_study(
            direction="maximize", pruner=build_pruner(name, startup_trials=2, warmup_epochs=1, epochs=4)
        )
        for _ in range(completed):
            study.add_trial(
                optuna.trial.create_trial(
                    params={"method": "kd"},
                    distributions=method,
                    value=0.8,
                    intermediate_values={1: 0.8, 2: 0.8, 3: 0.8},
                )
            )
        trial = study.ask(method)
        pruned = []
        for step in (1, 2, 3):
            trial.report(0.1, step)
            if trial.should_prune():
                pruned.append(step)
        return pruned

    assert bad_trial_pruned_at(2) == [2, 3]  # not at epoch 1 (warm-up), then at every epoch
    assert bad_trial_pruned_at(1) == []  # one completed trial: still starting up


# --------------------------------------------------------------------------- methods on every task


def test_lskd_and_dkd_are_refused_on_two_classes_with_the_reason_and_what_works():
    spec = spec_from_dict({"search": {"methods": ["lskd", "dkd"]}})
    with pytest.raises(KdsearchError) as err:
        methods_for_task(spec, 2)
    text = str(err.value)
    assert "cannot distill on 2 classes" in text and "no gradient" in text and "NCKD is 0" in text
    assert "kd, cosine, hint" in text or all(m in text.split("work on 2 classes:")[1] for m in ("kd", "cosine", "hint"))


def test_lskd_and_dkd_are_dropped_when_the_study_lists_other_methods_too():
    spec = spec_from_dict({"search": {"methods": ["kd", "lskd", "dkd"]}})
    kept, dropped = methods_for_task(spec, 2)
    assert kept.search.methods == ["kd"] and set(dropped) == {"lskd", "dkd"}
    same, none = methods_for_task(spec, 3)
    assert same.search.methods == ["kd", "lskd", "dkd"] and none == {}
    assert unusable_methods(["kd", "cosine", "hint"], 2) == {}


def test_nckd_is_identically_zero_on_two_classes_and_not_on_three():
    torch.manual_seed(0)
    for classes, zero in ((2, True), (3, False)):
        s, t = torch.randn(16, classes), torch.randn(16, classes) * 3
        target = torch.randint(0, classes, (16,))
        value = float(nckd_term(s, t, target, temperature=2.0))
        assert (abs(value) < 1e-6) is zero, (classes, value)


def test_dkd_warmup_scales_the_distillation_terms_over_the_first_epoch():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5) * 4
    y, labeled = torch.randint(0, 5, (8,)), torch.ones(8, dtype=torch.bool)
    params = {"temperature": 4.0, "alpha_tckd": 1.0, "beta": 8.0, "warmup_epochs": 1.0}
    ce = float(F.cross_entropy(s, y))

    def loss(progress: float) -> float:
        return float(DKD().loss(DistillBatch(s, y, labeled, t, progress=progress), params))

    full = loss(math.inf) - ce
    assert full > 0
    assert loss(0.25) - ce == pytest.approx(0.25 * full, rel=1e-5)  # a quarter through epoch 1: a quarter
    assert loss(1.0) - ce == pytest.approx(full, rel=1e-5) and loss(3.0) - ce == pytest.approx(full, rel=1e-5)
    assert warmup_factor(0.5, 0.0) == 1.0  # warmup_epochs = 0: no warm-up


def test_the_training_loop_tells_the_loss_how_far_training_is():
    from kdsearch.data import Split
    from kdsearch.distill.methods import Method
    from kdsearch.distill.train import TrainSet, TrialPlan, fit

    seen: list[float] = []

    class Recorder(Method):
        name = "recorder"
        needs_teacher = False

        def loss(self, batch, params, *, regressor=None):
            seen.append(batch.progress)
            return F.cross_entropy(batch.student_logits, batch.labels)

    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 3, (40,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    train = TrainSet(x, y, torch.ones(40, dtype=torch.bool))
    fit(model, TrialPlan(Recorder(), {}, 0, train, epochs=2, batch_size=10, lr=1e-3), Split(x, y))
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])


def test_lskd_alpha_is_log_uniform_so_the_papers_ratio_is_reachable():
    spec = spec_from_dict({"search": {"methods": ["lskd"]}})
    r = spec.method_space("lskd")["alpha"]
    assert r.log and r.low <= 0.011 / 2 and r.high == 1.0
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    alphas = []
    for _ in range(200):
        trial = study.ask()
        alphas.append(trial_params(trial, spec)[1]["alpha"])
        study.tell(trial, 0.0)
    assert sum(a < 0.03 for a in alphas) > 60  # log-uniform on [0.001, 1]: ~half below 0.03 (uniform: 3%)


def test_a_fixed_method_parameter_is_stored_but_not_searched():
    spec = spec_from_dict({"search": {"methods": ["dkd"]}, "methods": {"dkd": {"warmup_epochs": 2}}})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    for _ in range(3):
        trial = study.ask()
        _, params = trial_params(trial, spec)
        study.tell(trial, 0.5)
        assert params["warmup_epochs"] == 2.0 and trial.params["dkd_warmup_epochs"] == 2.0


# --------------------------------------------------------------------------- pseudo-label baseline


def test_pseudo_label_loss_uses_only_the_teachers_arg_max_on_unlabeled_rows():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    labeled = torch.tensor([True, True, False, False, False, False])
    loss = pseudo_label_loss(s, t, y, labeled)
    targets = torch.where(labeled, y, t.argmax(-1))
    assert float(loss) == pytest.approx(float(F.cross_entropy(s, targets)))
    sharper = t * 10 + 3  # same arg-max, other soft targets: the same loss
    assert float(pseudo_label_loss(s, sharper, y, labeled)) == pytest.approx(float(loss))


def test_pseudo_label_trains_on_the_distillation_pool_with_the_same_steps(monkeypatch, write_spec):
    import kdsearch.search.objective as search
    from kdsearch.prepare import prepare, study_data
    from kdsearch.progress import Console
    from kdsearch.runner import load_study_spec

    spec, _ = load_study_spec(write_spec(epochs=1))
    console = Console(echo=lambda *a, **k: None, bars=False)
    data = study_data(prepare(spec, console), console)
    calls = {}

    def recording_fit(model, plan, val, **kw):
        calls[plan.method.name] = (plan.train, plan.steps_per_epoch)
        return []

    monkeypatch.setattr(search, "fit", recording_fit)
    for method in ("pseudo_label", "kd", "scratch"):
        search.train_student(data, method, {"temperature": 2.0, "alpha": 0.5} if method == "kd" else {}, 0)
    assert calls["pseudo_label"][0] is data.distill_set and calls["scratch"][0] is data.labeled_set
    assert calls["pseudo_label"][1] == calls["kd"][1] == calls["scratch"][1] == data.steps


# --------------------------------------------------------------------------- paired statistics


def test_paired_difference_matches_a_hand_computation():
    a, b = [0.86, 0.865, 0.855], [0.84, 0.84, 0.84]  # differences 0.02, 0.025, 0.015
    d = paired_difference(a, b)
    mean, std = 0.02, 0.005  # sample std of (0.02, 0.025, 0.015): sqrt((0 + 0.005² + 0.005²) / 2)
    half = 4.3027 * std / math.sqrt(3)  # t_{0.975, 2} = 4.3027: the interval is [0.00758, 0.03242]
    assert d.n == 3 and d.mean == pytest.approx(mean) and d.std == pytest.approx(std)
    assert (d.low, d.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert d.significant and d.text() == "+2.00 pp [95% CI +0.76, +3.24, significant]"


def test_paired_interval_including_zero_is_not_significant_and_one_seed_is_na():
    d = paired_difference([0.85, 0.84, 0.86], [0.84, 0.85, 0.84])  # differences +0.01, -0.01, +0.02
    assert d.low < 0 < d.high and not d.significant
    assert "significant" not in d.text()
    one = paired_difference([0.9], [0.8])
    assert one.std is None and one.low is None and not one.significant
    assert one.text() == "+10.00 pp [95% CI n/a: 1 seed]"


def test_paired_by_seed_pairs_runs_of_the_same_seed():
    runs = {2: 0.9, 1: 0.8, 3: 0.7}
    base = {1: 0.7, 2: 0.85}
    d = paired_by_seed(runs, base)
    assert d.n == 2 and d.mean == pytest.approx((0.05 + 0.1) / 2)  # seed 3 has no partner
    assert paired_by_seed(runs, {9: 0.5}) is None


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.7062) and t_quantile_975(4) == pytest.approx(2.7764)
    assert t_quantile_975(30) == pytest.approx(2.0423)  # the table's last entry
    # beyond the table, the Cornish-Fisher expansion: exact values (scipy.stats.t.ppf(0.975, df)) to 2.5e-6, tight
    # enough that a changed coefficient of its third or fourth term shows
    exact = {31: 2.039513446, 35: 2.030107928, 40: 2.021075390, 60: 2.000297822, 120: 1.979930405, 1000: 1.962339081}
    for df, value in exact.items():
        assert t_quantile_975(df) == pytest.approx(value, abs=2.5e-6), df
        assert t_two_sided_p_of(t_quantile_975(df), df) == pytest.approx(0.05, abs=1e-5), df
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1"):
        t_quantile_975(0)


def t_two_sided_p_of(t: float, df: int) -> float:
    from kdsearch.search.stats import t_two_sided_p

    return t_two_sided_p(t, df)


def test_t_p_values_match_the_quantile_table_and_known_values():
    from kdsearch.search.stats import t_two_sided_p

    for df in (1, 2, 4, 10, 30):
        assert t_two_sided_p(t_quantile_975(df), df) == pytest.approx(0.05, abs=2e-5)  # the table's own definition
    assert t_two_sided_p(2.0, 3) == pytest.approx(0.139326, abs=1e-6)  # scipy.stats.t.sf(2, 3) * 2
    assert t_two_sided_p(1.0, 100) == pytest.approx(0.319724, abs=1e-6)
    assert t_two_sided_p(-2.0, 3) == t_two_sided_p(2.0, 3) and t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert t_two_sided_p(float("inf"), 3) == 0.0 and t_two_sided_p(1e9, 3) == pytest.approx(0.0, abs=1e-12)
    assert t_two_sided_p(0.5, 1) == pytest.approx(0.704833, abs=1e-6)  # the continued fraction's other branch
    assert t_two_sided_p(3.0, 50) == pytest.approx(0.0042017, abs=1e-7)  # mpmath quad of the t density
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_two_sided_p(1.0, 0)
    d = paired_difference([0.86, 0.865, 0.855], [0.84, 0.84, 0.84])
    assert d.p == pytest.approx(t_two_sided_p(0.02 / (0.005 / math.sqrt(3)), 2)) and d.p < 0.05


def test_holm_adjusts_step_down_and_a_family_of_one_is_left_alone():
    from kdsearch.search.stats import holm_adjusted, with_holm

    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    assert holm_adjusted([0.6, 0.7, 0.01]) == pytest.approx([1.0, 1.0, 0.03])  # capped at 1, order kept
    assert holm_adjusted([]) == [] and holm_adjusted([0.04]) == pytest.approx([0.04])
    weak = paired_difference([0.82, 0.83, 0.805, 0.815], [0.8] * 4)  # p ≈ 0.044: the interval excludes 0
    other = paired_difference([0.82, 0.83, 0.808, 0.812], [0.8] * 4)  # p ≈ 0.037
    strong = paired_difference([0.86, 0.865, 0.855], [0.84, 0.84, 0.84])  # p ≈ 0.020
    assert all(d.significant for d in (weak, other, strong))
    alone = with_holm([weak])
    assert alone[0].holm_p is None and alone[0].significant  # one comparison: nothing to correct
    a, b = with_holm([weak, other])  # 2 × 0.037 = 0.073: neither survives the correction
    assert b.holm_p == pytest.approx(2 * other.p) and a.holm_p == pytest.approx(max(2 * other.p, weak.p))
    assert not a.significant and not b.significant
    assert "Holm p" in a.text() and "significant" not in a.text()
    c, d = with_holm([strong, weak])  # 2 × 0.020 < 0.05, then 0.044 < 0.05: both stand
    assert c.significant and d.significant


# --------------------------------------------------------------------------- sampler and storage


def _next_draws(sampler: optuna.samplers.BaseSampler, n: int = 8) -> list[float]:
    """``n`` draws of x in [0, 1] by ``sampler`` after 12 finished trials (the higher x, the better) and with
    those draws left running: what parallel workers ask while the others' trials are in flight."""
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(12):
        study.add_trial(optuna.trial.create_trial(params={"x": i / 12}, distributions={"x": dist}, value=i / 12))
    return [study.ask({"x": dist}).params["x"] for _ in range(n)]  # none told: all running


def test_parallel_draws_spread_out_while_trials_run_and_the_objective_is_named():
    """Constant liar: trials still running count as bad, so parallel workers do not all sample the same best
    region; the study's sampler spreads its draws wider than the same TPE without it."""
    spec = spec_from_dict({"search": {"objective": "auc"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plain = optuna.samplers.TPESampler(
            seed=spec.search.sampler_seed, multivariate=True, group=True, constant_liar=False
        )
    liar, greedy = _next_draws(make_sampler(spec)), _next_draws(plain)
    assert statistics.pstdev(liar) > 1.5 * statistics.pstdev(greedy), (liar, greedy)
    study = create_study(spec, optuna.storages.InMemoryStorage())
    assert study.metric_names == ["val_auc"]


# --------------------------------------------------------------------------- a binary study, end to end


@pytest.fixture
def binary_idx(tmp_path):
    """A small 2-class IDX dataset (images brighter for class 1)."""
    import numpy as np
    from conftest import write_idx

    rng = np.random.default_rng(0)
    root = tmp_path / "binary"
    root.mkdir()
    for part, n in (("train", 300), ("t10k", 60)):
        labels = rng.integers(0, 2, n)
        write_idx(
            root / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 100, (n, 28, 28)) + labels[:, None, None] * 100
        )
        write_idx(root / f"{part}-labels-idx1-ubyte.gz", labels)
    return root


def _binary_spec(tmp_path, root, methods: list[str]):
    path = tmp_path / "binary.toml"
    path.write_text(
        f"""name = "binary"
output_dir = "{tmp_path / "run"}"
[data]
root = "{root}"
val_size = 40
labeled = 60
unlabeled = 100
[teacher]
epochs = 1
[student]
epochs = 1
[search]
methods = {methods!r}
pruner = "none"
[final]
seeds = 1
[runtime]
cache_dir = "{tmp_path / "cache"}"
""".replace("'", '"')
    )
    return path


def test_a_binary_study_of_lskd_and_dkd_is_refused_before_the_teacher_is_built(tmp_path, binary_idx):
    from typer.testing import CliRunner

    from kdsearch.cli import app

    result = CliRunner().invoke(
        app, ["run", "--spec", str(_binary_spec(tmp_path, binary_idx, ["lskd", "dkd"])), "--trials", "1"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot distill on 2 classes" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "cache").glob("teachers/*.pt"))  # refused before the teacher was trained


def test_a_binary_study_drops_lskd_and_dkd_with_a_warning_and_runs_the_rest(tmp_path, binary_idx):
    from typer.testing import CliRunner

    from kdsearch.cli import app

    spec = _binary_spec(tmp_path, binary_idx, ["kd", "lskd", "dkd"])
    result = CliRunner().invoke(app, ["run", "--spec", str(spec), "--trials", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: method lskd is dropped") == 1  # said once, by prepare
    assert result.output.count("warning: method dkd is dropped") == 1
    study = optuna.load_study(study_name="binary", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert [t.params["method"] for t in study.trials] == ["kd"] * 3
