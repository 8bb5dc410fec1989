"""Image data above data.memory_budget_mb streams from disk (issue 5): same tensors, teacher run once per image."""

from __future__ import annotations

import logging

import optuna
import pytest
import torch
from helpers import folder_spec, make_class_folder, write_mhist
from typer.testing import CliRunner

import kdsearch.distill.teacher as teacher_module
from kdsearch.cli import app
from kdsearch.config.load import spec_from_dict
from kdsearch.config.spec import DataSpec
from kdsearch.data import ImageStore, load_splits
from kdsearch.distill.teacher import prepare_teacher
from kdsearch.search.objective import prepare_study_data, train_student


@pytest.fixture
def cats_dogs(tmp_path):
    return make_class_folder(tmp_path / "cats_vs_dogs", {"cat": 30, "dog": 30})


def test_data_above_the_budget_streams_and_gives_the_in_memory_tensors(cats_dogs, tmp_path, caplog):
    cache = tmp_path / "cache"
    in_memory = load_splits(folder_spec(cats_dogs, image_size=64), cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="kdsearch.data"):
        streamed = load_splits(folder_spec(cats_dogs, image_size=64, memory_budget_mb=1), cache_dir=cache)
    assert "60 images exceed memory_budget_mb = 1; streaming from disk with 2 loader workers" in caplog.text
    assert "mean/std estimated from all of the" in caplog.text
    assert streamed.streaming and not in_memory.streaming and streamed.cache_hit is None
    for name in ("train", "val", "test"):
        a, b = getattr(in_memory, name), getattr(streamed, name)
        assert isinstance(b.x, ImageStore) and isinstance(a.x, torch.Tensor)
        assert b.x.shape == a.x.shape and len(b) == len(a)
        assert torch.equal(a.y, b.y)
        assert torch.equal(b.x[:], a.x)  # same decoding, same statistics, same normalization
    rows = torch.tensor([5, 0, 17, 5])
    assert torch.equal(streamed.train.x[rows], in_memory.train.x[rows])
    assert torch.equal(torch.cat(list(streamed.train.x.split(7))), in_memory.train.x)  # through 2 workers
    assert torch.equal(streamed.train.x.subset(rows)[1:3], in_memory.train.x[rows[1:3]])
    assert torch.equal(streamed.labeled, in_memory.labeled)
    # the fingerprint (teacher cache key) covers the files: touching one changes it
    again = load_splits(folder_spec(cats_dogs, image_size=64, memory_budget_mb=1), cache_dir=cache)
    assert again.fingerprint == streamed.fingerprint
    victim = cats_dogs / "cat" / "001.png"
    victim.write_bytes(victim.read_bytes())
    st = victim.stat()
    import os

    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert (
        load_splits(folder_spec(cats_dogs, image_size=64, memory_budget_mb=1), cache_dir=cache).fingerprint
        != streamed.fingerprint
    )


def test_stream_always_never_and_unreadable_files(cats_dogs, tmp_path):
    spec = folder_spec(cats_dogs, stream="always", loader_workers=0, mean=[0.5] * 3, std=[0.25] * 3)
    splits = load_splits(spec, cache_dir=tmp_path / "cache")
    assert isinstance(splits.train.x, ImageStore) and splits.train.x.workers == 0
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing decoded into the cache
    (cats_dogs / "dog" / "666.jpg").write_bytes(b"not a jpeg")
    from kdsearch.errors import KdsearchError

    with pytest.raises(KdsearchError, match=r"1 unreadable image.*666.jpg"):
        load_splits(spec, cache_dir=tmp_path / "cache")
    skipped = load_splits(spec.model_copy(update={"skip_unreadable": True}), cache_dir=tmp_path / "cache")
    assert len(skipped.skipped) == 1 and len(skipped.train) + len(skipped.val) + len(skipped.test) == 60
    with pytest.raises(ValueError, match="stream is only read with source"):
        DataSpec(stream="always")


@pytest.mark.slow
def test_teacher_runs_once_per_image_and_trials_never_run_it(cats_dogs, tmp_path, monkeypatch):
    spec = spec_from_dict(
        {
            "data": {
                "source": "image_folder",
                "root": str(cats_dogs),
                "image_size": 16,
                "val_size": 6,
                "test_size": 6,
                "labeled": 10,
                "unlabeled": 30,
                "stream": "always",
            },
            "teacher": {"epochs": 1, "batch_size": 8},
            "student": {"epochs": 2, "batch_size": 8},
            "search": {"methods": ["kd", "cosine"]},
            "runtime": {"cache_dir": str(tmp_path / "cache")},
        }
    )
    splits = load_splits(spec.data, cache_dir=tmp_path / "cache" / "data")
    seen = {"eval": 0, "train": 0}
    built = teacher_module.build_model

    def counting_build(*args, **kw):
        model = built(*args, **kw)
        model.register_forward_hook(
            lambda m, inp, out: seen.__setitem__(
                "train" if m.training else "eval", seen["train" if m.training else "eval"] + len(inp[0])
            )
        )
        return model

    monkeypatch.setattr(teacher_module, "build_model", counting_build)
    teacher = prepare_teacher(spec, splits, torch.device("cpu"))
    assert teacher.train_logits.shape == (len(splits.train), splits.num_classes)
    # cached logits on train + val metrics, once each, + the val score after each training epoch (test: never here)
    scored = len(splits.train) + len(splits.val) + spec.teacher.epochs * len(splits.val)
    assert seen["eval"] == scored and seen["train"] > 0
    data = prepare_study_data(spec, splits, teacher, torch.device("cpu"))
    assert isinstance(data.distill_set.x, ImageStore) and data.distill_set.teacher_features is not None
    # the validation split fits the budget: decoded once, so per-epoch scoring reads no file
    assert isinstance(splits.val.x, ImageStore) and isinstance(data.val.x, torch.Tensor)
    assert torch.equal(data.val.x, torch.cat(list(splits.val.x.split(4))))
    pool = len(splits.labeled) + len(splits.unlabeled)
    after_prepare = seen["eval"]
    assert after_prepare - scored <= pool + 1  # the features: once per pool image (+ a one-image shape probe)
    for method in ("kd", "cosine", "scratch"):
        model, history = train_student(data, method, {"temperature": 4.0, "alpha": 0.5, "feature_weight": 1.0}, seed=3)
        assert len(history) == 2
    assert seen["eval"] == after_prepare  # trials use the cached outputs, never the teacher
    # a streamed run trains exactly as the in-memory one (same seeded batches, same tensors)
    mem_spec = spec.model_copy(update={"data": spec.data.model_copy(update={"stream": "auto"})})
    mem = load_splits(mem_spec.data, cache_dir=tmp_path / "cache" / "data")
    mem_data = prepare_study_data(mem_spec, mem, teacher, torch.device("cpu"))
    _, streamed_history = train_student(data, "kd", {"temperature": 4.0, "alpha": 0.5}, seed=5)
    _, mem_history = train_student(mem_data, "kd", {"temperature": 4.0, "alpha": 0.5}, seed=5)
    assert [r.train_loss for r in streamed_history] == pytest.approx([r.train_loss for r in mem_history], rel=1e-5)
    assert [r.accuracy for r in streamed_history] == [r.accuracy for r in mem_history]


@pytest.mark.slow
def test_streamed_study_runs_end_to_end_through_the_cli(tmp_path):
    root = write_mhist(tmp_path / "mhist")
    sets = [
        "data.source='csv'",
        "data.image_size=16",
        "data.stream='always'",
        "data.loader_workers=1",
        "data.val_size=4",
        "data.labeled=0",
        "data.unlabeled=6",
        "teacher.arch='cnn_small'",
        "student.arch='cnn_small'",
        "teacher.epochs=1",
        "student.epochs=1",
        "teacher.batch_size=8",
        "student.batch_size=8",
        "search.methods=['kd', 'hint']",
        "search.teacher_modes=['cached', 'consistent']",
        "final.seeds=1",
        f"runtime.cache_dir={str(tmp_path / 'cache')!r}",
        "runtime.threads=1",
    ]
    spec_path = tmp_path / "study.toml"
    spec_path.write_text('name = "streamed"\n')
    args = [
        "run",
        "--spec",
        str(spec_path),
        "--data-root",
        str(root),
        "--trials",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        *[a for s in sets for a in ("--set", s)],
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "streaming from disk with 1 loader workers" in result.output
    study = optuna.load_study(study_name="streamed", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    final = study.user_attrs["final_comparison"]
    assert final["students"][-1]["label"].startswith("scratch") and final["split"] == "test"
    assert (tmp_path / "out" / "report.html").is_file()


def test_truncated_jpeg_is_found_before_streaming_starts(tmp_path):
    """A JPEG cut short passes PIL's verify(); streaming still finds it at load time (skipped or listed)."""
    import io

    from PIL import Image as PILImage

    from kdsearch.data import probe_images

    buf = io.BytesIO()
    PILImage.new("RGB", (64, 64), (120, 30, 200)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    good = tmp_path / "good.png"
    PILImage.new("RGB", (8, 8)).save(good)
    bad = probe_images([good, path])
    assert [i for i, _ in bad] == [1]


def test_a_streamed_split_too_big_for_the_budget_stays_streamed(cats_dogs, tmp_path):
    spec = spec_from_dict(
        {
            "data": {
                "source": "image_folder",
                "root": str(cats_dogs),
                "image_size": 16,
                "val_size": 6,
                "test_size": 6,
                "labeled": 10,
                "unlabeled": 0,
                "stream": "always",
            }
        }
    )
    splits = load_splits(spec.data, cache_dir=tmp_path / "cache")
    assert isinstance(splits.val.in_memory("cpu", budget_mb=1e-6).x, ImageStore)
    assert isinstance(splits.val.in_memory("cpu", budget_mb=64).x, torch.Tensor)
