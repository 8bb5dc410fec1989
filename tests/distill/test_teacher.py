"""The teacher is trained once, cached by a hash of what determines it, and reused."""

from __future__ import annotations

import pytest
import torch

from kdsearch.config.load import spec_from_dict
from kdsearch.data import load_splits
from kdsearch.distill.teacher import prepare_teacher, teacher_key


def _spec(root, cache, **teacher):
    return spec_from_dict(
        {
            "data": {"root": str(root), "val_size": 80, "labeled": 40, "unlabeled": 100},
            "teacher": {"epochs": 1, **teacher},
            "runtime": {"cache_dir": str(cache)},
        }
    )


def test_second_call_hits_the_cache(idx_dataset, tmp_path):
    spec = _spec(idx_dataset, tmp_path / "cache")
    splits = load_splits(spec.data)
    first = prepare_teacher(spec, splits, torch.device("cpu"))
    second = prepare_teacher(spec, splits, torch.device("cpu"))
    assert not first.from_cache and second.from_cache
    assert first.path == second.path and first.path.is_file()
    assert first.train_logits.shape == (len(splits.train), splits.num_classes)
    assert torch.allclose(first.train_logits, second.train_logits)
    assert set(first.metrics) == {"val_accuracy", "val_auc"}  # the test split waits for the final comparison
    # the cached weights reproduce the cached logits
    with torch.no_grad():
        assert torch.allclose(second.model(splits.train.x[:16]), second.train_logits[:16], atol=1e-4)


@pytest.mark.parametrize("damage", ["edited logits", "digest removed", "edited weights"])
def test_cached_logits_that_are_not_the_cached_weights_outputs_are_computed_again(
    idx_dataset, tmp_path, damage, caplog
):
    spec = _spec(idx_dataset, tmp_path / "cache")
    splits = load_splits(spec.data)
    first = prepare_teacher(spec, splits, torch.device("cpu"))
    entry = torch.load(first.path, weights_only=True)
    if damage == "edited logits":
        entry["train_logits"] = entry["train_logits"].flip(0)  # another image's outputs in every row
    elif damage == "digest removed":  # an entry written before the digests: logits not provably these weights'
        del entry["logits_sha256"], entry["weights_sha256"]
        entry["train_logits"] = torch.zeros_like(entry["train_logits"])
    else:
        name = next(k for k, v in entry["state_dict"].items() if v.is_floating_point())
        entry["state_dict"][name] = entry["state_dict"][name] + 0.5
    torch.save(entry, first.path)

    second = prepare_teacher(spec, splits, torch.device("cpu"))

    assert second.from_cache
    with torch.no_grad():
        assert torch.allclose(second.model.eval()(splits.train.x), second.train_logits, atol=1e-4)
    assert "its logits do not match its weights; computing them again" in caplog.text
    again = torch.load(first.path, weights_only=True)  # rewritten: the next load trusts it without recomputing
    assert torch.equal(again["train_logits"], second.train_logits)
    caplog.clear()
    prepare_teacher(spec, splits, torch.device("cpu"))
    assert "computing them again" not in caplog.text


def test_cache_key_changes_with_what_determines_the_teacher(idx_dataset, tmp_path):
    spec = _spec(idx_dataset, tmp_path)
    splits = load_splits(spec.data)
    key = teacher_key(spec, splits)
    assert key == teacher_key(_spec(idx_dataset, tmp_path / "elsewhere"), splits)  # cache dir is not part of it
    assert key != teacher_key(_spec(idx_dataset, tmp_path, epochs=2), splits)
    assert key != teacher_key(_spec(idx_dataset, tmp_path, seed=1), splits)
    other_split = load_splits(spec.data.model_copy(update={"split_seed": 5}))
    assert key != teacher_key(spec, other_split)


def test_teacher_from_a_checkpoint_is_used_as_is_or_fine_tuned(idx_dataset, tmp_path):
    from kdsearch.nets.models import build_model

    splits = load_splits(_spec(idx_dataset, tmp_path).data)
    torch.manual_seed(3)
    pretrained = build_model("bn_cnn", splits.num_classes, 1, 28)
    ckpt = tmp_path / "teacher.pt"
    torch.save(pretrained.state_dict(), ckpt)

    as_is = prepare_teacher(_spec(idx_dataset, tmp_path / "a", checkpoint=str(ckpt)), splits, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(as_is.train_logits[:8], pretrained.eval()(splits.train.x[:8]), atol=1e-4)

    tuned = prepare_teacher(
        _spec(idx_dataset, tmp_path / "b", checkpoint=str(ckpt), fine_tune_epochs=1), splits, torch.device("cpu")
    )
    assert not torch.allclose(tuned.train_logits[:8], as_is.train_logits[:8])
    # the key follows the checkpoint's content, not its name
    key = teacher_key(_spec(idx_dataset, tmp_path, checkpoint=str(ckpt)), splits)
    torch.save(build_model("bn_cnn", splits.num_classes, 1, 28).state_dict(), ckpt)
    assert teacher_key(_spec(idx_dataset, tmp_path, checkpoint=str(ckpt)), splits) != key


def test_checkpoint_for_another_architecture_is_a_clear_error(idx_dataset, tmp_path):
    from kdsearch.errors import KdsearchError
    from kdsearch.nets.models import build_model

    splits = load_splits(_spec(idx_dataset, tmp_path).data)
    ckpt = tmp_path / "light.pt"
    torch.save(build_model("light_nn", splits.num_classes, 1, 28).state_dict(), ckpt)
    with pytest.raises(KdsearchError, match="does not fit teacher.arch = 'bn_cnn'"):
        prepare_teacher(_spec(idx_dataset, tmp_path, checkpoint=str(ckpt)), splits, torch.device("cpu"))


def test_teacher_augmentation_changes_the_teacher_and_its_cache_key(idx_dataset, tmp_path):
    plain = _spec(idx_dataset, tmp_path / "p")
    augmented = _spec(idx_dataset, tmp_path / "a", augment_shift=2, augment_flip=True)
    splits = load_splits(plain.data)
    assert teacher_key(plain, splits) != teacher_key(augmented, splits)
    a = prepare_teacher(plain, splits, torch.device("cpu"))
    b = prepare_teacher(augmented, splits, torch.device("cpu"))
    assert not torch.allclose(a.train_logits, b.train_logits)
