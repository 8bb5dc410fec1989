#!/usr/bin/env python
"""Trials/hour of one kdsearch study, run two ways: a typical hand-written KD loop vs kdsearch's own.

Both ways run the SAME Optuna study (same spec, trial count, TPE sampler seed, hence the same
sampled ``temperature``/``alpha``), the same teacher, the same labeled + unlabeled student pool,
the same student architecture, init seed, optimizer, learning rate, epochs and optimizer steps
per epoch. Only the data/teacher path differs:

* ``naive``: what a user following the PyTorch knowledge-distillation tutorial writes: a
  ``torch.utils.data.Dataset`` over the pool's uint8 images that builds one PIL image per item
  and applies ``transforms.ToTensor()`` + ``transforms.Normalize``; a
  ``DataLoader(batch_size, shuffle=True, drop_last=True)``; a live teacher forward pass
  (``with torch.no_grad(): teacher(x)``) at every step; the method's own loss (kd, lskd, dkd) and Adam;
  validation through a ``DataLoader`` over the validation split, after each epoch.
* ``kdsearch``: ``kdsearch.search.objective.prepare_study_data`` + ``kdsearch.search.objective.train_student``:
  device-resident normalized tensors, randperm index batching, teacher logits computed once and
  cached (kdsearch's ``fit`` also evaluates on the validation split after each epoch).

Timed: ``study.optimize`` of each way (sampling, training, per-epoch validation, Optuna
bookkeeping). NOT timed: reading the dataset, training (or loading) the teacher, and the one-off
set-up of each way (building the Dataset / gathering the device tensors; printed separately).
Pruning is off (``NopPruner``) so every trial of both ways runs all its epochs. By default the
two studies are interleaved trial by trial (ABBA), so drifting background load hits both alike.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_trial_loop.py                 # the full measurement
    .venv/bin/python benchmarks/bench_trial_loop.py --quick         # tiny data, 2 trials (~1 min)
    .venv/bin/python benchmarks/bench_trial_loop.py --threads 2 --json runs/bench_trial_loop/result.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # use this checkout's kdsearch even without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from kdsearch.config.load import load_spec, spec_from_dict  # noqa: E402
from kdsearch.config.spec import StudySpec  # noqa: E402
from kdsearch.data import Splits, load_splits, read_idx_dataset, split_indices  # noqa: E402
from kdsearch.distill.methods import METHODS, DistillBatch, build_method, kd_loss  # noqa: E402
from kdsearch.distill.metrics import accuracy, auc  # noqa: E402
from kdsearch.distill.teacher import Teacher, prepare_teacher  # noqa: E402
from kdsearch.distill.train import EpochResult, resolve_device  # noqa: E402
from kdsearch.errors import KdsearchError  # noqa: E402
from kdsearch.nets.models import build_model  # noqa: E402
from kdsearch.search.objective import StudyData, make_objective, prepare_study_data, train_student  # noqa: E402
from kdsearch.search.study import make_sampler  # noqa: E402

DEFAULT_SPEC = Path("studies") / "fashion_mnist.toml"
DEFAULT_OUT = Path("runs") / "bench_trial_loop"
QUICK_DATA = {"train_limit": 6000, "labeled": 500, "unlabeled": 1500, "val_size": 1000, "test_limit": 1000}
QUICK_TEACHER_EPOCHS = 1
QUICK_TRIALS = 2
DEFAULT_TRIALS = 6

TrainFn = Callable[[str, Mapping[str, float], int, Callable[[EpochResult], None]], list[EpochResult]]


# ---------------------------------------------------------------------------------------------
# set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Trials/hour of the same kdsearch study run with a naive DataLoader + live-teacher loop "
        "and with kdsearch's cached-logits, index-batching loop.",
    )
    p.add_argument("--spec", type=Path, default=None, help=f"study TOML (default: {DEFAULT_SPEC})")
    p.add_argument(
        "--trials", type=int, default=None, help=f"trials per way (default: {DEFAULT_TRIALS}; --quick: {QUICK_TRIALS})"
    )
    p.add_argument("--epochs", type=int, default=None, help="override student.epochs")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for both ways (default: the spec's runtime.threads; 0: all cores)",
    )
    p.add_argument("--device", default=None, help="override runtime.device ('cpu', 'cuda', 'auto')")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="num_workers of the naive DataLoaders (default 0, the DataLoader default)",
    )
    p.add_argument(
        "--schedule",
        choices=("interleaved", "sequential"),
        default="interleaved",
        help="interleaved (default): alternate the ways trial by trial (ABBA), so drifting background load hits both alike; "
        "sequential: all naive trials, then all kdsearch trials",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny data (6000 train, 500+1500 pool, 1000 val), teacher 1 epoch, 2 trials",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where the teacher cache goes unless $KDSEARCH_CACHE or runtime.cache_dir is set (default: {DEFAULT_OUT})",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    for name in ("trials", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1")
    if args.threads is not None and args.threads < 0:
        p.error("--threads must be >= 0")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    return args


def default_spec_path() -> Path:
    return DEFAULT_SPEC if DEFAULT_SPEC.is_file() else REPO / DEFAULT_SPEC


def build_spec(args: argparse.Namespace) -> StudySpec:
    """The spec file with the benchmark's overrides applied (validated by ``spec_from_dict``)."""
    path = args.spec or default_spec_path()
    raw = load_spec(path).model_dump(mode="json")
    if args.quick:
        raw["data"].update(QUICK_DATA)
        raw["teacher"]["epochs"] = QUICK_TEACHER_EPOCHS
    if args.epochs is not None:
        raw["student"]["epochs"] = args.epochs
    if args.device is not None:
        raw["runtime"]["device"] = args.device
    if raw["runtime"].get("cache_dir") is None and not os.environ.get("KDSEARCH_CACHE"):
        raw["runtime"]["cache_dir"] = str(args.output_dir / "cache")
    return spec_from_dict(raw, source=f"{path} (with benchmark overrides)")


def resolve_threads(requested: int) -> int:
    return requested or len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------------
# the naive way: what a typical user writes


@dataclass
class RawImages:
    """The uint8 images and labels of the training and validation splits, exactly as ``load_splits`` cuts them."""

    train: np.ndarray  # N×H×W (or N×H×W×C) uint8, rows of ``splits.train``
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    mean: float  # the normalization ``load_splits`` applies: (x/255 - mean) / std
    std: float


def read_raw_images(spec: StudySpec) -> RawImages:
    """Re-read the IDX files and cut the same train/val rows as ``kdsearch.data.load_splits``."""
    d = spec.data
    train_img, train_lab, _, _ = read_idx_dataset(Path(d.root))
    if d.train_limit:
        train_img, train_lab = train_img[: d.train_limit], train_lab[: d.train_limit]
    train_idx, val_idx = split_indices(len(train_lab), d.val_size, d.split_seed)
    tr, va = train_idx.numpy(), val_idx.numpy()
    # the same statistic load_splits computes (over the training split, scaled to [0, 1])
    x = torch.from_numpy(np.ascontiguousarray(train_img[tr]))
    x = (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).float().div_(255)
    mean, std = x.mean(), x.std().clamp_min(1e-6)
    return RawImages(
        train_img[tr],
        train_lab[tr].astype(np.int64),
        train_img[va],
        train_lab[va].astype(np.int64),
        float(mean),
        float(std),
    )


class KDImageDataset(Dataset):
    """One (image, label, is_labeled) per item: uint8 array → PIL image → transform, like the tutorial."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, labeled: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.labeled, self.transform = images, labels, labeled, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, bool]:
        img = Image.fromarray(self.images[i])  # mode "L" for grayscale, "RGB" for H×W×3
        return self.transform(img), int(self.labels[i]), bool(self.labeled[i])


def naive_datasets(raw: RawImages, splits: Splits) -> tuple[KDImageDataset, KDImageDataset]:
    """The student's pool (labeled rows first, then unlabeled, as prepare_study_data orders them) and val."""
    channels = splits.in_channels
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((raw.mean,) * channels, (raw.std,) * channels)]
    )
    pool = torch.cat([splits.labeled, splits.unlabeled]).numpy()
    labeled = np.zeros(len(pool), dtype=bool)
    labeled[: len(splits.labeled)] = True
    train = KDImageDataset(raw.train[pool], raw.train_labels[pool], labeled, transform)
    val = KDImageDataset(raw.val, raw.val_labels, np.ones(len(raw.val_labels), dtype=bool), transform)
    return train, val


def check_naive_inputs(train: KDImageDataset, val: KDImageDataset, splits: Splits) -> float:
    """Max |difference| between the Dataset's items and kdsearch's tensors (should be ~0); raises on label mismatch."""
    pool = torch.cat([splits.labeled, splits.unlabeled])
    if not torch.equal(torch.from_numpy(train.labels), splits.train.y[pool]) or not torch.equal(
        torch.from_numpy(val.labels), splits.val.y
    ):
        raise SystemExit("benchmark bug: the naive Dataset's labels differ from kdsearch's splits")
    diff = 0.0
    for ds, ref in ((train, splits.train.x[pool]), (val, splits.val.x)):
        for i in np.linspace(0, len(ds) - 1, num=min(64, len(ds)), dtype=int):
            diff = max(diff, float((ds[int(i)][0] - ref[int(i)]).abs().max()))
    return diff


def naive_train_student(
    spec: StudySpec,
    splits: Splits,
    teacher: nn.Module,
    train_ds: KDImageDataset,
    val_ds: KDImageDataset,
    device: torch.device,
    steps: int,
    workers: int,
    method: str,
    params: Mapping[str, float],
    seed: int,
    on_epoch: Callable[[EpochResult], None],
) -> list[EpochResult]:
    """The tutorial loop: DataLoader batches, live teacher forward, kd_loss, Adam; DataLoader validation."""
    s = spec.student
    torch.manual_seed(seed)  # same init as kdsearch.search.objective.train_student (the batch order differs)
    model = build_model(s.arch, splits.num_classes, splits.in_channels, splits.image_size).to(device)
    train_loader = DataLoader(
        train_ds, batch_size=min(s.batch_size, len(train_ds)), shuffle=True, drop_last=True, num_workers=workers
    )
    val_loader = DataLoader(val_ds, batch_size=s.batch_size, shuffle=False, num_workers=workers)
    if len(train_loader) != steps:
        raise SystemExit(f"benchmark bug: the naive loop has {len(train_loader)} steps per epoch, kdsearch {steps}")
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    loss_of = build_method(method)  # the same logit loss kdsearch uses (kd, lskd, dkd, ...), called per batch
    if loss_of.needs_features:
        raise SystemExit(f"the naive loop taps no feature maps; the study sampled {method!r}")
    teacher.eval()
    history: list[EpochResult] = []
    for epoch in range(1, s.epochs + 1):
        model.train()
        running_loss = 0.0
        for step, (x, y, labeled) in enumerate(train_loader):
            x, y, labeled = x.to(device), y.to(device), labeled.to(device)
            with torch.no_grad():
                teacher_logits = teacher(x)
            student_logits = model(x)
            batch = DistillBatch(student_logits, y, labeled, teacher_logits, progress=epoch - 1 + (step + 1) / steps)
            loss = loss_of.loss(batch, params)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        model.eval()
        outputs, targets = [], []
        with torch.no_grad():
            for x, y, _ in val_loader:
                outputs.append(model(x.to(device)))
                targets.append(y)
        logits, labels = torch.cat(outputs), torch.cat(targets).to(device)
        result = EpochResult(epoch, accuracy(logits, labels), auc(logits, labels), running_loss / steps)
        history.append(result)
        on_epoch(result)
    return history


# ---------------------------------------------------------------------------------------------
# the study, identical for both ways


def new_study(name: str, spec: StudySpec) -> optuna.Study:
    """An in-memory study with the spec's TPE sampler (same seed for both ways) and no pruning."""
    return optuna.create_study(
        study_name=f"bench-{name}",
        direction="maximize",
        sampler=make_sampler(spec),
        pruner=optuna.pruners.NopPruner(),
    )


def run_ways(
    spec: StudySpec, data: StudyData, ways: dict[str, TrainFn], n_trials: int, threads: int, schedule: str
) -> list[dict]:
    """Run ``n_trials`` of each way's study; only ``study.optimize`` is timed.

    ``interleaved``: trial i of every way before trial i + 1 of any, the order alternating each round
    (ABBA...), so a change in background load hits both ways alike. ``sequential``: all trials of
    one way, then all of the next. Either way each study's sampler sees the same sequence of calls
    as one ``study.optimize(n_trials=n_trials)``.
    """
    studies = {name: new_study(name, spec) for name in ways}
    objectives = {
        name: make_objective(
            data, train=lambda plan, on_epoch, fn=fn: fn(plan.method.name, plan.params, plan.seed, on_epoch)
        )
        for name, fn in ways.items()
    }
    seconds = dict.fromkeys(ways, 0.0)
    names = list(ways)
    if schedule == "interleaved":
        plan = [(name, 1) for i in range(n_trials) for name in (names if i % 2 == 0 else names[::-1])]
    else:
        plan = [(name, n_trials) for name in names]
    for name, n in plan:
        torch.set_num_threads(threads)
        gc.collect()
        start = time.perf_counter()
        studies[name].optimize(objectives[name], n_trials=n)
        seconds[name] += time.perf_counter() - start
        done = len(studies[name].trials)
        print(f"  [{name}] {done}/{n_trials} trials, {seconds[name]:.1f}s so far", flush=True)
    return [summarize(name, studies[name], seconds[name], n_trials) for name in names]


def summarize(name: str, study: optuna.Study, seconds: float, n_trials: int) -> dict:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) != n_trials:
        raise SystemExit(f"[{name}] only {len(complete)} of {n_trials} trials completed")
    best = study.best_trial
    return {
        "way": name,
        "trials": len(complete),
        "seconds": seconds,
        "seconds_per_trial": seconds / len(complete),
        "median_trial_wall_s": statistics.median(t.user_attrs["wall_time_s"] for t in complete),
        "trials_per_hour": 3600.0 * len(complete) / seconds,
        "best_trial": best.number,
        "best_value": best.value,
        "best_val_accuracy": best.user_attrs["accuracy"],
        "best_val_auc": best.user_attrs["auc"],
        "per_trial": [
            {
                "number": t.number,
                "params": t.params,
                "value": t.value,
                "val_accuracy": t.user_attrs["accuracy"],
                "wall_time_s": t.user_attrs["wall_time_s"],
            }
            for t in complete
        ],
    }


def warm_up(
    spec: StudySpec, splits: Splits, teacher: nn.Module, train_ds: KDImageDataset, device: torch.device
) -> None:
    """A few untimed forward/backward passes so neither timed way pays the first-call costs alone."""
    torch.manual_seed(0)
    model = build_model(spec.student.arch, splits.num_classes, splits.in_channels, splits.image_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=spec.student.lr)
    x, y, labeled = next(iter(DataLoader(train_ds, batch_size=min(spec.student.batch_size, len(train_ds)))))
    x, y, labeled = x.to(device), y.to(device), labeled.to(device)
    for _ in range(3):
        with torch.no_grad():
            t = teacher(x)
        loss = kd_loss(model(x), t, y, labeled, 4.0, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------------------------
# report


def print_table(rows: list[dict], ratio: float) -> None:
    header = f"{'way':<9} {'trials':>6} {'seconds':>9} {'s/trial':>8} {'trials/hour':>11} {'best val acc':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['way']:<9} {r['trials']:>6} {r['seconds']:>9.1f} {r['seconds_per_trial']:>8.2f} "
            f"{r['trials_per_hour']:>11.1f} {r['best_val_accuracy']:>12.4f}"
        )
    print(f"ratio kdsearch/naive (trials/hour): {ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        spec = build_spec(args)
        threads = resolve_threads(spec.runtime.threads if args.threads is None else args.threads)
        torch.set_num_threads(threads)
        device = resolve_device(spec.runtime.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise KdsearchError(
                f"device {spec.runtime.device!r} asked for but no CUDA device is visible; use --device cpu"
            )
        n_trials = args.trials or (QUICK_TRIALS if args.quick else DEFAULT_TRIALS)
        features = [m for m in spec.search.methods if METHODS.get(m).needs_features]
        if features:
            raise KdsearchError(
                f"search.methods = {spec.search.methods}: this benchmark's naive loop taps no feature maps "
                f"({', '.join(features)}); use a spec of logit methods, e.g. the default study"
            )

        # -- not timed: data, teacher -------------------------------------------------------
        t0 = time.perf_counter()
        splits = load_splits(spec.data)
        raw = read_raw_images(spec)
        data_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        teacher: Teacher = prepare_teacher(spec, splits, device)
        teacher_s = time.perf_counter() - t0
    except KdsearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # -- one-off set-up of each way (timed separately, not part of trials/hour) --------------
    t0 = time.perf_counter()
    train_ds, val_ds = naive_datasets(raw, splits)
    naive_setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = prepare_study_data(spec, splits, teacher, device)
    kdsearch_setup_s = time.perf_counter() - t0

    input_diff = check_naive_inputs(train_ds, val_ds, splits)
    with torch.no_grad():
        rows = torch.cat([splits.labeled, splits.unlabeled])[: spec.student.batch_size]
        teacher.model.eval()
        live = teacher.model(splits.train.x[rows].to(device)).float().cpu()
        teacher_diff = float((live - teacher.train_logits[rows]).abs().max())

    s = spec.student
    print(f"kdsearch trial-loop benchmark{' (--quick)' if args.quick else ''}")
    print(
        f"  torch {torch.__version__}, python {platform.python_version()}, device {device}, "
        f"torch threads {threads} (interop {torch.get_num_interop_threads()}), DataLoader workers {args.workers}"
    )
    print(
        f"  data: {len(splits.train)} train / {len(splits.val)} val; student pool {len(splits.labeled)} labeled + "
        f"{len(splits.unlabeled)} unlabeled; {s.arch}, batch {s.batch_size}, {data.steps} steps/epoch x {s.epochs} epochs"
    )
    how = "loaded from cache" if teacher.from_cache else "trained and cached"
    print(
        f"  teacher {spec.teacher.arch}: {how} in {teacher_s:.1f}s at {teacher.path} (val acc "
        f"{teacher.metrics['val_accuracy']:.4f}); NOT timed, nor is reading the data ({data_s:.1f}s)"
    )
    print(
        f"  set-up, not timed: naive Dataset {naive_setup_s:.3f}s, kdsearch prepare_study_data {kdsearch_setup_s:.3f}s"
    )
    print(
        f"  checks: naive inputs vs kdsearch tensors max|diff| {input_diff:.2e}; live vs cached teacher logits max|diff| {teacher_diff:.2e}"
    )
    print(
        f"  study: {n_trials} trials per way, TPE sampler seed {spec.search.sampler_seed}, pruning off, in-memory storage, {args.schedule}"
    )
    sys.stdout.flush()

    warm_up(spec, splits, teacher.model, train_ds, device)

    def naive_fn(method, params, seed, on_epoch):
        return naive_train_student(
            spec,
            splits,
            teacher.model,
            train_ds,
            val_ds,
            device,
            data.steps,
            args.workers,
            method,
            params,
            seed,
            on_epoch,
        )

    def kdsearch_fn(method, params, seed, on_epoch):
        return train_student(data, method, params, seed, on_epoch)[1]

    print(f"running ({args.schedule}):", flush=True)
    results = run_ways(spec, data, {"naive": naive_fn, "kdsearch": kdsearch_fn}, n_trials, threads, args.schedule)
    ratio = results[1]["trials_per_hour"] / results[0]["trials_per_hour"]
    same_params = [a["params"] for a in results[0]["per_trial"]] == [b["params"] for b in results[1]["per_trial"]]

    print()
    print_table(results, ratio)
    print(f"same sampled params in both ways: {'yes' if same_params else 'NO'}")
    if not same_params:
        print(
            "  (TPE leaves its random start-up phase after 10 trials; from then on its proposals depend on the "
            "observed accuracies, which differ slightly between the ways, so later trials may see other params)"
        )

    if args.json is not None:
        payload = {
            "benchmark": "bench_trial_loop",
            "quick": args.quick,
            "spec": spec.model_dump(mode="json"),
            "trials": n_trials,
            "threads": threads,
            "interop_threads": torch.get_num_interop_threads(),
            "dataloader_workers": args.workers,
            "schedule": args.schedule,
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "steps_per_epoch": data.steps,
            "epochs": s.epochs,
            "timed": "study.optimize only: sampling, training, per-epoch validation; excludes data loading, teacher training/loading and per-way set-up",
            "teacher": {
                "from_cache": teacher.from_cache,
                "seconds": teacher_s,
                "path": str(teacher.path),
                **teacher.metrics,
            },
            "setup_seconds": {"naive": naive_setup_s, "kdsearch": kdsearch_setup_s},
            "checks": {
                "input_max_abs_diff": input_diff,
                "teacher_logits_max_abs_diff": teacher_diff,
                "same_params": same_params,
            },
            "results": results,
            "ratio_kdsearch_over_naive": ratio,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
