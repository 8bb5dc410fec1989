"""The distilled students a study leaves: the final comparison's retrained students kept as files, and
``kdsearch export``'s retrain of one trial.

For the best trial of each method, every seed's student is kept as ``seeds/seed-<n>.safetensors``; the
seed whose test score is closest to the seeds' mean is the representative, exported under
``students/<method>/`` as safetensors, TorchScript and ONNX (checked against PyTorch) with a JSON card. With
candidate students, each front member's best trial goes under ``students/<candidate>/``, its cost in the card.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distill.train import TrainSet, evaluate, predict, steps_per_epoch
from ..errors import KdsearchError
from ..search.objective import StudyData, train_student
from ..search.results import Candidate, ExportedFiles, SeedRun, count_test_scoring
from ..search.study import params_of, teacher_mode_of
from .export import FILE_NAMES, ExportedStudent, export_student, save_safetensors

CHECK_IMAGES = 16  # test images the ONNX and TorchScript files are checked on


def representative(runs: list[SeedRun], metric: str) -> int:
    """Index of the run whose ``metric`` is closest to the runs' mean (the first such on a tie)."""
    values = [getattr(r, metric) for r in runs]
    mean = statistics.fmean(values)
    return min(range(len(runs)), key=lambda i: abs(values[i] - mean))


def student_card(
    data: StudyData,
    study_name: str,
    candidate: Candidate,
    run: SeedRun,
    *,
    train_on: str = "train",
    seeds: list[SeedRun] | None = None,
) -> dict[str, Any]:
    """What a user needs to use the student (the card written beside its files): architecture, classes, input
    and normalization, how it was trained (``candidate``'s method, params and trial; ``run``'s seed and scores)."""
    spec, splits = data.spec, data.splits
    card: dict[str, Any] = {
        "architecture": spec.student.arch,
        "arch_args": dict(spec.student.arch_args),
        "num_classes": splits.num_classes,
        "class_names": list(splits.class_names) or [str(i) for i in range(splits.num_classes)],
        "input": {
            "shape": ["N", splits.in_channels, splits.image_size, splits.image_size],
            "channels": splits.in_channels,
            "image_size": splits.image_size,
            "dtype": "float32",
            "normalization": "x = (pixel / 255 - mean) / std, per channel",
            "mean": list(splits.mean),
            "std": list(splits.std),
        },
        "output": "logits (N, num_classes); softmax for probabilities",
        "method": candidate.method,
        "params": dict(candidate.params),
        "teacher_mode": candidate.teacher_mode,
        "teacher": spec.teacher.arch,
        "study": study_name,
        "trial": candidate.trial,
        "seed": run.seed,
        "test": {"accuracy": run.accuracy, "auc": run.auc},
        "training": {
            "epochs": spec.student.epochs,
            "batch_size": spec.student.batch_size,
            "lr": spec.student.lr,
            "train_on": train_on,
        },
    }
    if seeds is not None:
        card["seeds"] = [r.to_attr() for r in seeds]
        card["representative"] = (
            f"the seed whose test {spec.search.objective} is closest to the mean of {len(seeds)} seeds: a "
            "representative picked by its test score, not a better model (picking the best seed would tune on test)"
        )
    return card


def _check_batch(data: StudyData) -> torch.Tensor:
    """A few test images on the CPU, to check the exported files against PyTorch."""
    test = data.splits.test
    x = test.x[torch.arange(min(CHECK_IMAGES, len(test)))]
    return x.float().cpu().contiguous()


def export_summary(exported: ExportedStudent, base: Path) -> ExportedFiles:
    """What the stored final comparison and the report say about an exported student (paths relative to ``base``)."""

    def rel(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(Path(base).resolve()))
        except ValueError:
            return str(Path(p).resolve())

    diff = exported.onnx_max_abs_diff
    return ExportedFiles(
        base=str(Path(base).resolve()),
        folder=rel(exported.folder),
        files={kind: rel(path) for kind, path in exported.files.items()},
        sizes={kind: Path(path).stat().st_size for kind, path in exported.files.items() if Path(path).is_file()},
        seed=exported.card.get("seed"),
        onnx_max_abs_diff=None if diff != diff else diff,  # NaN: no ONNX file
        test=exported.card.get("test"),
    )


class StudentKeeper:
    """Keeps the final comparison's distilled students (``keep``) and exports each method's representative."""

    def __init__(self, data: StudyData, study: Any, folder: Path) -> None:
        self.data, self.study, self.folder = data, study, Path(folder)
        self.kept: dict[str, list[tuple[Candidate, SeedRun, nn.Module]]] = {}

    def keep(self, candidate: Candidate, run: SeedRun, model: nn.Module) -> None:
        """``final_comparison``'s ``on_student``: a distilled student's weights saved per seed, kept in memory."""
        key = candidate.student or candidate.method  # students/<candidate>/ or students/<method>/
        if candidate.is_baseline:  # the baselines are for comparison, not for shipping
            return
        runs = self.kept.setdefault(key, [])
        seeds = self.folder / key / "seeds"
        if not runs and seeds.is_dir():  # a new final comparison replaces the last one's seeds
            for old in seeds.glob("seed-*.safetensors"):
                old.unlink()
        save_safetensors(model, seeds / f"seed-{run.seed}.safetensors")
        runs.append((candidate, run, copy.deepcopy(model).cpu()))

    def export(self, console: Any) -> dict[str, ExportedStudent]:
        """Each method's representative student as safetensors, TorchScript, ONNX and card."""
        metric = self.data.spec.search.objective
        check = _check_batch(self.data)
        out: dict[str, ExportedStudent] = {}
        for method, runs in sorted(self.kept.items()):
            i = representative([r for _, r, _ in runs], metric)
            candidate, run, model = runs[i]
            data = self.data.for_student(candidate.student)
            card = student_card(data, self.study.study_name, candidate, run, seeds=[r for _, r, _ in runs])
            costs = self.data.costs
            if candidate.student is not None and costs is not None and candidate.student in costs.students:
                card["candidate"] = candidate.student
                card["cost"] = {**costs.students[candidate.student].to_attr(), "hardware": costs.hardware}
            # strict=False: a format one student cannot take (an op without an ONNX mapping) is said, not fatal
            exported = export_student(
                model, self.folder / method, sample=check[:2], card=card, check_inputs=check, strict=False
            )
            out[method] = exported
            kinds = ", ".join(k for k in ("safetensors", "torchscript", "onnx") if k in exported.files)
            check_note = (
                "" if "onnx" not in exported.files else f"; ONNX vs PyTorch max |Δ| {exported.onnx_max_abs_diff:.1e}"
            )
            console.echo(
                f"student {method}: seed {run.seed} (test {metric} {getattr(run, metric):.4f}, closest to the mean of "
                f"{len(runs)} seeds) → {exported.folder} ({kinds}, card{check_note})"
            )
            for kind, why in exported.errors.items():
                console.echo(f"warning: student {method}: no {kind} file ({why})", err=True)
        return out


def with_val_in_pool(data: StudyData) -> StudyData:
    """``data`` whose student pool also holds the validation images as labeled rows (teacher logits computed
    for them): ``kdsearch export --train-on train+val``. Needs data held in memory."""
    from ..data import ImageStore

    val = data.val
    if isinstance(val.x, ImageStore) or isinstance(data.distill_set.x, ImageStore):
        raise KdsearchError(
            "--train-on train+val needs the images in memory, but this study streams them from disk; "
            "raise data.memory_budget_mb, or export with --train-on train"
        )
    device = data.device
    ones = torch.ones(len(val), dtype=torch.bool, device=device)
    logits = predict(data.teacher.model, val.x.to(device)).to(device)
    d, lab = data.distill_set, data.labeled_set
    distill = TrainSet(
        torch.cat([d.x, val.x.to(device)]),
        torch.cat([d.y, val.y.to(device)]),
        torch.cat([d.labeled, ones]),
        torch.cat([d.teacher_logits, logits]),
        None,
    ).to(device)
    labeled = TrainSet(
        torch.cat([lab.x, val.x.to(device)]), torch.cat([lab.y, val.y.to(device)]), torch.cat([lab.labeled, ones])
    ).to(device)
    return replace(
        data,
        distill_set=distill,
        labeled_set=labeled,
        steps=steps_per_epoch(len(distill), data.spec.student.batch_size),
    )


def export_one(data: StudyData, study: Any, trial: Any, out: Path, *, train_on: str, console: Any) -> ExportedStudent:
    """Retrain ``trial``'s method and params (seed ``final.first_seed``), score it on test, export it to ``out``."""
    if train_on not in ("train", "train+val"):
        raise KdsearchError(f"--train-on {train_on!r}: use 'train' or 'train+val'")
    costs = data.costs
    data = data.for_student(trial.params.get("student"))  # a candidate student's trial: that architecture
    if train_on == "train+val":
        data = with_val_in_pool(data)
    method, params = params_of(trial)
    mode = teacher_mode_of(trial)
    seed = data.spec.final.first_seed
    console.echo(
        f"export: retraining trial {trial.number} ({method}, "
        + ", ".join(f"{k}={v:.4g}" for k, v in params.items())
        + f") for {data.spec.student.epochs} epochs on {train_on}, seed {seed} ({len(data.distill_set)} rows, "
        f"{data.steps} steps per epoch)"
    )
    model, _ = train_student(data, method, params, seed, teacher_mode=mode)
    test = data.splits.test.in_memory(data.device, data.spec.data.memory_budget_mb / 2)
    acc, roc = evaluate(model, test)
    candidate = Candidate(
        label=f"trial {trial.number}", method=method, params=params, trial=trial.number, teacher_mode=mode
    )
    scoring = count_test_scoring(study)
    card = student_card(data, study.study_name, candidate, SeedRun(seed=seed, accuracy=acc, auc=roc), train_on=train_on)
    name = trial.params.get("student")
    if name is not None and costs is not None and name in costs.students:
        card["candidate"] = name
        card["cost"] = {**costs.students[name].to_attr(), "hardware": costs.hardware}
    card["test_scoring"] = (
        f"scoring {scoring} of this study's test split (its final comparisons and exports): a re-run, so these "
        "scores must not choose among trials"
        if scoring > 1
        else "the first scoring of this study's test split"
    )
    check = _check_batch(data)
    # strict=False: a format the model cannot take (TorchScript tracing of some hub models) is said, and the rest ships
    exported = export_student(model, Path(out), sample=check[:2], card=card, check_inputs=check, strict=False)
    for kind, why in exported.errors.items():
        console.echo(f"export: no {FILE_NAMES[kind]}: {why} (card.json records it; the other files are written)")
    rerun = (
        f" (test-split scoring {scoring} of this study: a re-run; choosing a trial by these scores would tune on test)"
        if scoring > 1
        else ""
    )
    console.echo(
        f"export: test accuracy {acc:.4f}, AUC {roc:.4f}{rerun}; wrote {', '.join(p.name for p in exported.files.values())} "
        f"to {exported.folder}"
        + ("" if "onnx" in exported.errors else f" (ONNX vs PyTorch max |Δ| {exported.onnx_max_abs_diff:.1e})")
    )
    return exported
