"""A study may search over every method and both teacher-output modes; each trains end to end."""

from __future__ import annotations

import optuna
import pytest
import torch

from kdsearch.config.load import load_spec, spec_from_dict
from kdsearch.data import load_splits
from kdsearch.distill.teacher import prepare_teacher
from kdsearch.distill.train import Augment, augment_batch
from kdsearch.search.objective import final_comparison, make_objective, prepare_study_data
from kdsearch.search.study import create_study

ALL_METHODS = ["kd", "lskd", "dkd", "cosine", "hint"]


def _study_setup(spec_path, **search):
    raw = load_spec(spec_path).model_dump(mode="json")
    raw["search"].update(search)
    raw["student"]["epochs"] = 1
    raw["runtime"]["threads"] = 1
    spec = spec_from_dict(raw)
    splits = load_splits(spec.data)
    teacher = prepare_teacher(spec, splits, torch.device("cpu"))
    return spec, splits, teacher


@pytest.mark.slow
def test_all_five_methods_complete_and_reach_the_final_comparison(write_spec):
    spec, splits, teacher = _study_setup(write_spec(), methods=ALL_METHODS)
    data = prepare_study_data(spec, splits, teacher, torch.device("cpu"))
    assert data.features.startswith("cached in memory")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    for m in ALL_METHODS:
        study.enqueue_trial({"method": m})
    study.optimize(make_objective(data), n_trials=len(ALL_METHODS))
    done = {t.params["method"]: t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert sorted(done) == sorted(ALL_METHODS)
    for t in done.values():
        assert 0 < t.value <= 1 and t.user_attrs["teacher_mode"] == "cached"

    final = final_comparison(data, study, teacher)
    labels = [s.label for s in final.students]
    assert labels == [f"best {m}" for m in sorted(ALL_METHODS)] + ["scratch", "pseudo-label"]


def test_features_too_large_for_the_budget_run_the_teacher_live(write_spec):
    spec, splits, teacher = _study_setup(write_spec(), methods=["hint"])
    raw = spec.model_dump(mode="json")
    raw["teacher"]["feature_cache_mb"] = 0
    spec = spec_from_dict(raw)
    data = prepare_study_data(spec, splits, teacher, torch.device("cpu"))
    assert data.features.startswith("teacher runs live") and data.distill_set.teacher_features is None
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.optimize(make_objective(data), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_teacher_mode_is_searched_and_consistent_mode_adds_an_augmented_scratch(write_spec):
    spec, splits, teacher = _study_setup(write_spec(), methods=["kd"], teacher_modes=["cached", "consistent"])
    data = prepare_study_data(spec, splits, teacher, torch.device("cpu"))
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.enqueue_trial({"teacher_mode": "consistent"})
    study.enqueue_trial({"teacher_mode": "cached"})
    study.optimize(make_objective(data), n_trials=2)
    assert {t.params["teacher_mode"] for t in study.trials} == {"cached", "consistent"}


@pytest.mark.slow
def test_a_consistent_winner_is_compared_with_an_equally_augmented_scratch(write_spec):
    spec, splits, teacher = _study_setup(write_spec(), methods=["kd"], teacher_modes=["consistent"])
    data = prepare_study_data(spec, splits, teacher, torch.device("cpu"))
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.optimize(make_objective(data), n_trials=1)
    final = final_comparison(data, study, teacher)
    modes = {s.label: s.teacher_mode for s in final.students}
    assert modes == {
        "best kd": "consistent",
        "scratch": "cached",
        "pseudo-label": "cached",
        "scratch (augmented)": "consistent",
    }


def test_augmentation_shifts_and_flips_within_the_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, Augment(shift=1, flip=True), g)
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist())  # replicate padding adds no new values
    assert torch.equal(augment_batch(x, Augment(shift=0, flip=False), g), x)
    many = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    flipped = augment_batch(many, Augment(shift=0, flip=True), torch.Generator().manual_seed(1))
    mirrored = [torch.equal(flipped[i], many[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(flipped[i], many[i]) for i in range(64)]
    assert all(m or k for m, k in zip(mirrored, kept))  # each image is itself or its mirror image
    assert 16 <= sum(mirrored) <= 48 and sum(kept) == 64 - sum(mirrored)  # about half are flipped
    shifted = augment_batch(many, Augment(shift=1, flip=False), torch.Generator().manual_seed(1))
    assert sum(not torch.equal(shifted[i], many[i]) for i in range(64)) >= 32  # most images moved


@pytest.mark.parametrize("layer", ["nope", "features.99"])
def test_unknown_feature_layer_is_a_clear_error(write_spec, layer):
    from kdsearch.errors import KdsearchError

    spec, splits, teacher = _study_setup(write_spec(), methods=["cosine"])
    raw = spec.model_dump(mode="json")
    raw["teacher"]["feature_layer"] = layer
    with pytest.raises(KdsearchError, match=f"teacher.feature_layer '{layer}' is not a module"):
        prepare_study_data(spec_from_dict(raw), splits, teacher, torch.device("cpu"))
