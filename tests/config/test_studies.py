"""Every seed setup in studies/ runs end to end, on small local files in its own layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import FASHION_MNIST, write_idx
from helpers import REPO, make_class_folder, write_cifar, write_mhist
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.config.load import load_spec
from kdsearch.nets.models import build_model

STUDIES = REPO / "studies"


def fake_mnist(root: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    root.mkdir()
    for part, n in (("train", 240), ("t10k", 40)):
        labels = rng.integers(0, 10, n)
        write_idx(root / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20)
        write_idx(root / f"{part}-labels-idx1-ubyte.gz", labels)
    return root, ["data.val_size=40"]


def fake_pet_images(root: Path) -> tuple[Path, list[str]]:
    make_class_folder(root, {"Cat": 30, "Dog": 30})
    (root / "Cat" / "666.jpg").write_bytes(b"not a jpeg")  # PetImages ships a few of these
    # a torchvision teacher at small resolution (cnn_big needs >= 64 px), trained on augmented images
    return root, ["data.image_size=32", "teacher.arch=resnet18", "teacher.augment_shift=2", "teacher.augment_flip=true"]


def fake_cifar(root: Path) -> tuple[Path, list[str]]:
    write_cifar(root, per_batch=12, n_test=12)
    return root, ["data.val_size=12"]


def fake_mhist(root: Path) -> tuple[Path, list[str]]:
    write_mhist(root)
    ckpt = root.parent / "checkpoints"
    ckpt.mkdir()
    torch.save(build_model("resnet50", 1000, 3, 32).state_dict(), ckpt / "resnet50.pt")  # "ImageNet" heads
    torch.save(build_model("mobilenet_v2", 1000, 3, 32).state_dict(), ckpt / "mobilenet_v2.pt")
    return root, [
        "data.image_size=32",
        f"teacher.checkpoint={str(ckpt / 'resnet50.pt')!r}",
        f"student.checkpoint={str(ckpt / 'mobilenet_v2.pt')!r}",
        "teacher.fine_tune_epochs=1",
    ]


def real_fashion_mnist_slice(root: Path) -> tuple[Path, list[str]]:
    """The default studies read the Debian package's Fashion-MNIST: a small slice of it."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: run `make test` (it installs dataset-fashion-mnist)")
    sizes = [
        "data.train_limit=1000",
        "data.test_limit=200",
        "data.val_size=200",
        "data.labeled=200",
        "data.unlabeled=400",
    ]
    return FASHION_MNIST, sizes


CASES = {
    "fashion_mnist.toml": real_fashion_mnist_slice,
    "fashion_mnist_methods.toml": real_fashion_mnist_slice,
    "fashion_mnist_deploy.toml": real_fashion_mnist_slice,
    "mnist.toml": fake_mnist,
    "cats_vs_dogs.toml": fake_pet_images,
    "cifar10_densenet.toml": fake_cifar,
    "cifar10_tutorial.toml": fake_cifar,
    "mhist.toml": fake_mhist,
}


def test_every_study_file_is_covered_and_valid():
    files = {p.name for p in STUDIES.glob("*.toml")}
    assert set(CASES) == files, f"every study file needs a case here (missing: {sorted(files - set(CASES))})"
    for name in files:
        load_spec(STUDIES / name)


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(CASES))
def test_study_runs_two_trials_on_small_local_files(study, tmp_path):
    root, extra = CASES[study](tmp_path / "data")
    spec = load_spec(STUDIES / study)
    shrink = [
        "teacher.epochs=1",
        "student.epochs=1",
        "teacher.batch_size=16",
        "student.batch_size=16",
        "final.seeds=1",
        f"runtime.cache_dir={str(tmp_path / 'cache')!r}",
        "runtime.threads=1",
    ]
    args = [
        "run",
        "--spec",
        str(STUDIES / study),
        "--data-root",
        str(root),
        "--trials",
        str(len(spec.search.methods) + 1),
        "--output-dir",
        str(tmp_path / "out"),
        *[a for s in shrink + extra for a in ("--set", s)],
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    study_db = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    complete = [t for t in study_db.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 2
    final = study_db.user_attrs["final_comparison"]
    labels = [s["label"] for s in final["students"]]
    if spec.student.candidates:  # each front member: its best trial, then a scratch student of its architecture
        assert final["front"] and all(f"{name}: scratch" in labels for name in final["front"])
        assert set(final["costs"]["students"]) == set(spec.student.candidate_specs())
        assert (tmp_path / "out" / "report.html").is_file() and "Choosing the student" in result.output + (
            tmp_path / "out" / "report.html"
        ).read_text()
        return
    assert "scratch" in labels and labels[0].startswith("best ")
    assert ("pseudo-label" in labels) == (
        spec.data.unlabeled > 0
    )  # the hard-label baseline when there are unlabeled images
    teacher_arch = "resnet18" if study == "cats_vs_dogs.toml" else spec.teacher.arch
    assert set(final["cost"]) == {f"teacher ({teacher_arch})", f"student ({spec.student.arch})"}
    assert (tmp_path / "out" / "report.html").is_file()
    if study == "mhist.toml":
        assert spec.search.objective == "auc" and len(final["seeds"]) == 1
        assert study_db.best_trial.value == study_db.best_trial.user_attrs["auc"]
        assert all(0 <= t.user_attrs["auc"] <= 1 for t in complete)
        assert "resnet50.pt, fine-tuned 1 epoch, scored and cached" in result.output  # not "trained"
    if study == "cats_vs_dogs.toml":
        assert "skipped 1 unreadable image" in result.output
