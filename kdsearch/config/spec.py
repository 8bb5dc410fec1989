"""``StudySpec``: the typed, validated description of one study (read from TOML by ``load.py``).

Every field has a default (the data, teacher and student defaults are the Fashion-MNIST study's;
``studies/fashion_mnist.toml`` also sets its search and final comparison); unknown keys are errors, and a
bad value fails at load time with a message that names the field (``search.objective: ...``).
Method and model names are checked against ``catalog`` (no torch), so validating a spec is fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import KdsearchError
from .catalog import ParamRange, is_model, method_info, method_names, model_names, searchable_method_names

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


MAX_SEED = 2**31 - 1  # seeds plus trial numbers stay within what numpy and torch accept
MAX_PARAM = 1e6  # search ranges beyond this overflow the losses (T² of a huge T)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _expand_home(cls, value: object) -> object:
        """``~/data`` in any path field means the home folder, as in a shell."""
        return value.expanduser() if isinstance(value, Path) else value


SOURCE_FIELDS: dict[str, tuple[str, ...]] = {  # DataSpec field: the sources that read it
    "train_limit": ("idx", "cifar10", "torchvision", "python"),
    "test_limit": ("idx", "cifar10", "torchvision", "python"),
    "download": ("idx", "cifar10", "torchvision"),
    "test_size": ("image_folder", "csv", "torchvision", "python"),
    "skip_unreadable": ("image_folder", "csv"),
    "stream": ("image_folder", "csv", "torchvision", "python"),
    "loader_workers": ("image_folder", "csv", "torchvision", "python"),
    "factory": ("python",),
    "dataset": ("torchvision",),
    "args": ("torchvision", "python"),
    "csv_file": ("csv",),
    "image_dir": ("csv",),
    "file_column": ("csv",),
    "label_column": ("csv",),
    "partition_column": ("csv",),
    "train_value": ("csv",),
    "test_value": ("csv",),
}


class DataSpec(_Section):
    """Where the images come from, how they are decoded and how they are split.

    ``source`` picks the reader: ``idx`` (MNIST layout, the default Fashion-MNIST study),
    ``cifar10`` (the python-pickle batches), ``image_folder`` (``root/<class>/*.png|jpg|…``,
    optionally under ``root/train``, ``root/val``, ``root/test``) or ``csv`` (an image folder plus
    a CSV naming each file's label and partition, e.g. MHIST), ``torchvision`` (a class of
    ``torchvision.datasets`` named by ``dataset``, read from ``root``) or ``python`` (the datasets
    returned by the user's function ``factory = "package.module:function"``). Fields that only one source
    reads are errors with another source (unless left at their default).
    Sizes (``val_size``, ``test_size``) are a count (int >= 1) or a fraction (float in (0, 1)).
    ``image_folder``, ``csv``, ``torchvision`` and ``python`` data above ``memory_budget_mb`` streams through a
    DataLoader with ``loader_workers`` workers (``stream``); the teacher's outputs are still computed once per image.
    """

    source: Literal["idx", "cifar10", "image_folder", "csv", "torchvision", "python"] = Field(
        "idx",
        description="the reader: idx (MNIST-layout IDX files), cifar10 (the python-pickle batches), image_folder "
        "(root/<class>/ image files), csv (an image folder plus a CSV of labels and partitions), torchvision (a "
        "torchvision.datasets class, see dataset) or python (the datasets of factory)",
    )
    root: Path = Field(
        Path(DEFAULT_FASHION_MNIST_ROOT), description="dataset folder (required for sources other than idx and python)"
    )
    val_size: int | float = Field(
        5000, description="images held out of the training split for validation: a count, or a fraction in (0, 1)"
    )
    test_size: int | float | None = Field(
        None,
        description="image_folder without root/test, csv without partition column: images held out for the "
        "test split, a count or a fraction in (0, 1) (default 0.1)",
    )
    labeled: int = Field(
        2000, ge=0, description="training images whose labels the student may use (0: all not unlabeled)"
    )
    unlabeled: int = Field(8000, ge=0, description="transfer images the student sees through the teacher only")
    train_limit: int = Field(
        0, ge=0, description="idx, cifar10, torchvision, python: use only the first N training images (0: all)"
    )
    test_limit: int = Field(
        0, ge=0, description="idx, cifar10, torchvision, python: use only the first N test images (0: all)"
    )
    split_seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed of the validation split (and of a carved test split) and of the draw of the labeled and "
        "unlabeled images",
    )
    image_size: int | None = Field(
        None,
        ge=4,
        le=2048,
        description="resize every image to this square size (default: native; 32 for image_folder, csv)",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="1 (grayscale) or 3 (RGB) (default: native; 3 for image_folder, csv)"
    )
    mean: list[float] | None = Field(
        None, description="per-channel mean on the [0, 1] scale (default: training split's)"
    )
    std: list[float] | None = Field(None, description="per-channel std on the [0, 1] scale (default: training split's)")
    memory_budget_mb: int = Field(
        2048,
        ge=1,
        description="largest in-memory float32 size of all splits, in MiB; image_folder, csv, torchvision and "
        "python data above it streams (see stream), idx and cifar10 data above it is refused",
    )
    stream: Literal["auto", "always", "never"] = Field(
        "auto",
        description="image_folder, csv, torchvision, python: 'auto' streams images through a DataLoader when the splits "
        "exceed memory_budget_mb, 'always' streams whatever the size, 'never' refuses data above the budget",
    )
    loader_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="image_folder, csv, torchvision, python: DataLoader worker processes decoding streamed images (0: in-process)",
    )
    skip_unreadable: bool = Field(False, description="image_folder, csv: skip corrupt images instead of stopping")
    download: bool | Literal["fashion_mnist", "mnist"] = Field(
        False,
        description="download with torchvision into root when it holds no files (needs internet): cifar10: true; "
        'idx: "fashion_mnist" (or true) or "mnist"',
    )
    csv_file: Path = Field(Path("annotations.csv"), description="csv: the CSV, relative to root (or absolute)")
    image_dir: Path = Field(Path("images"), description="csv: the image folder, relative to root (or absolute)")
    file_column: str = Field("Image Name", min_length=1, description="csv: column with the image file name")
    label_column: str = Field("Majority Vote Label", min_length=1, description="csv: column with the class label")
    partition_column: str = Field(
        "Partition", description="csv: column with the split ('' : no column, carve test_size)"
    )
    train_value: str = Field("train", min_length=1, description="csv: partition value of training rows")
    test_value: str = Field("test", min_length=1, description="csv: partition value of test rows")
    factory: str | None = Field(
        None,
        description="python: 'package.module:function' returning the datasets: a dict with 'train' and optionally "
        "'val', 'test', 'classes', or a tuple (train, test); items are (image, label)",
    )
    dataset: str | None = Field(
        None, description="torchvision: a class of torchvision.datasets taking train= or split=, e.g. 'CIFAR100'"
    )
    args: dict[str, Any] = Field(
        {}, description="python, torchvision: extra keyword arguments for the factory or the dataset class"
    )

    @field_validator("val_size", "test_size")
    @classmethod
    def _count_or_fraction(cls, value: int | float | None) -> int | float | None:
        if value is None or isinstance(value, bool):
            if isinstance(value, bool):
                raise ValueError("give a count (integer >= 1) or a fraction in (0, 1)")
            return value
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{value} is not a count >= 1; give a count >= 1 or a fraction in (0, 1)")
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"{value} is not a fraction in (0, 1); give a fraction in (0, 1) or a count as an integer")
        return value

    @model_validator(mode="after")
    def _check_source_fields(self) -> "DataSpec":
        for name, sources in SOURCE_FIELDS.items():
            if self.source not in sources and getattr(self, name) != type(self).model_fields[name].default:
                users = " or ".join(repr(s) for s in sources)
                raise ValueError(
                    f"{name} is only read with source = {users} (source is {self.source!r}); remove it or change source"
                )
        if isinstance(self.download, str) and self.source != "idx":
            raise ValueError(
                f"download = {self.download!r} names an IDX dataset; with source = {self.source!r} use true"
            )
        if self.source == "torchvision" and not self.dataset:
            raise ValueError(
                'dataset: source = "torchvision" needs dataset, a class of torchvision.datasets, e.g. "CIFAR100"'
            )
        if self.factory is not None and not is_import_path(self.factory):
            raise ValueError(f"factory: {self.factory!r} is not an import path; write it as 'package.module:function'")
        if self.source not in ("idx", "python") and "root" not in self.model_fields_set:
            raise ValueError(
                f"root: source = {self.source!r} needs root, the dataset folder; set data.root or --data-root"
            )
        if self.source == "csv" and self.partition_column and self.test_size is not None:
            raise ValueError(
                f"test_size: the test split comes from the column {self.partition_column!r}; "
                'remove test_size, or set partition_column = "" to carve a seeded test split'
            )
        if self.source == "csv" and self.train_value == self.test_value:
            raise ValueError(f"train_value and test_value are both {self.train_value!r}; they must differ")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std: give both (per-channel, on the [0, 1] scale) or neither")
        if self.mean is not None and self.std is not None:
            if self.channels is None and self.source in ("python", "torchvision"):  # the items say: 1 or 3
                if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                    raise ValueError(
                        f"mean and std need one value per channel (1 or 3); got {len(self.mean)} and {len(self.std)}"
                    )
            else:
                n = self.resolved_channels()
                if len(self.mean) != n or len(self.std) != n:
                    raise ValueError(
                        f"mean and std need one value per channel ({n}); got {len(self.mean)} and {len(self.std)}"
                    )
            if not all(0.0 <= m <= 1.0 for m in self.mean) or not all(0.0 < s <= 1.0 for s in self.std):
                raise ValueError(
                    "mean must lie in [0, 1] and std in (0, 1]: they are on the [0, 1] pixel scale "
                    "(divide 0-255 values by 255)"
                )
        return self

    def resolved_channels(self) -> int:
        """Channels of the loaded images: ``channels``, else the source's own (idx 1, others 3)."""
        if self.channels is not None:
            return self.channels
        return 1 if self.source == "idx" else 3


def is_import_path(name: str) -> bool:
    """Whether ``name`` reads as ``package.module:attribute`` (a user's callable), not a registry name."""
    module, sep, attr = name.partition(":")
    return (
        bool(sep)
        and all(p.isidentifier() for p in module.split("."))
        and all(p.isidentifier() for p in attr.split("."))
    )


WHOLE_MODEL_ARCHS = ("torchscript", "exported")  # teacher.arch values that take the whole model from teacher.checkpoint
GIVEN_ARCH = "python"  # arch of a model object handed to the Python API (kdsearch.run_study(teacher=..., student=...))


class ModelSpec(_Section):
    """An architecture (a registry name or the user's ``package.module:callable``) and how it is trained."""

    arch: str = Field(
        description="a registry name (kdsearch models), or 'package.module:callable' building the user's nn.Module"
    )
    arch_args: dict[str, Any] = Field(
        {}, description="extra keyword arguments for the arch's callable, e.g. { width = 32 } (import paths only)"
    )
    epochs: int = Field(5, ge=1, description="training epochs")
    batch_size: int = Field(128, ge=1, description="images per optimizer step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    feature_layer: str | None = Field(
        None,
        description="module path tapped by feature methods (cosine, hint); default: the model's registry entry, else "
        "the module just before its last nn.Linear",
    )
    checkpoint: Path | None = Field(None, description="start from these weights (a state_dict or TorchScript .pt)")
    checkpoint_ignore: list[str] = Field(
        [], description="key prefixes not loaded from the checkpoint, e.g. ['fc.'] for a replaced classifier head"
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        if not is_model(name) and not is_import_path(name) and name not in (*WHOLE_MODEL_ARCHS, GIVEN_ARCH):
            raise ValueError(
                f"unknown model {name!r}; give a known model ({', '.join(model_names())}) or your own as "
                "'package.module:callable'"
            )
        return name

    @model_validator(mode="after")
    def _args_for_import_paths(self) -> "ModelSpec":
        if self.arch_args and not is_import_path(self.arch):
            raise ValueError(f"arch_args: only an import-path arch takes arguments (arch is {self.arch!r})")
        return self


class TeacherSpec(ModelSpec):
    """The teacher: trained (or loaded from ``checkpoint``) once, scored on validation and cached with its outputs
    on the training split; every trial of the study distills from it."""

    arch: str = Field(
        "bn_cnn",
        description="a registry name, 'package.module:callable' building the user's nn.Module, or 'torchscript' / "
        "'exported': the whole model read from checkpoint",
    )
    epochs: int = Field(
        6,
        ge=1,
        description="training epochs on the training split, from scratch; unused when the weights come from a "
        "checkpoint, a whole-model file or Python (fine_tune_epochs applies then)",
    )
    seed: int = Field(0, description="torch seed of the teacher's initial weights, batch order and augmentation")
    augment_shift: int = Field(0, ge=0, description="train the teacher on random shifts of up to N pixels (0: off)")
    augment_flip: bool = Field(False, description="train the teacher on random horizontal flips")
    fine_tune_epochs: int = Field(
        0, ge=0, description="with a checkpoint: epochs of fine-tuning on this dataset (0: use it as it is)"
    )
    feature_cache_mb: float = Field(
        1024,
        ge=0,
        description="MB of teacher features (float16) that cosine/hint trials may keep in memory, computed once; "
        "above it those trials run the teacher live",
    )

    @model_validator(mode="after")
    def _whole_model_needs_file(self) -> "TeacherSpec":
        if self.arch in WHOLE_MODEL_ARCHS and self.checkpoint is None:
            kind = "a TorchScript file" if self.arch == "torchscript" else "a torch.export program (.pt2)"
            raise ValueError(f"arch = {self.arch!r} takes the whole model from checkpoint; set checkpoint to {kind}")
        return self


class StudentSpec(ModelSpec):
    """The student: built fresh for every trial and for every seed of the final comparison; scratch and pseudo-label
    baselines have the same architecture and the same number of optimizer steps."""

    arch: str = Field(
        "light_nn",
        description="a registry name or 'package.module:callable' building the user's nn.Module (not a "
        "whole-model file: a student is trained from its initial weights)",
    )
    epochs: int = Field(
        5,
        ge=1,
        description="epochs of every trial and of every retrained student; an epoch is (labeled + unlabeled) // "
        "batch_size steps, for scratch too (kdsearch export --epochs trains longer)",
    )
    augment_shift: int = Field(2, ge=0, description="'consistent' mode: random shifts of up to N pixels")
    augment_flip: bool = Field(True, description="'consistent' mode: random horizontal flips (false for digits)")

    @field_validator("arch")
    @classmethod
    def _trainable_arch(cls, name: str) -> str:
        if name in WHOLE_MODEL_ARCHS:
            raise ValueError(
                f"{name!r} is for a teacher used as it is; a student is built fresh for every trial: give a known "
                "model or 'package.module:callable'"
            )
        return name


class SearchSpec(_Section):
    """The Optuna side: which methods, which objective, which pruner."""

    trials: int = Field(
        50,
        ge=1,
        description="trials kdsearch run adds (its --trials overrides it); for kdsearch worker: the finished "
        "(COMPLETE + PRUNED) trials the whole study holds when the workers stop",
    )
    methods: list[str] = Field(
        ["kd"],
        description="the methods a trial samples from (param method), each listed once: kd, lskd, dkd, cosine, hint, "
        "or one registered from Python; each method's ranges are in [methods.<name>]",
    )
    objective: Literal["accuracy", "auc"] = Field(
        "accuracy",
        description="the validation metric each trial reports after every epoch and the study maximizes (the dashboard "
        "shows it as val_accuracy or val_auc); auc is binary ROC AUC on two classes, else macro one-vs-rest",
    )
    pruner: Literal["median_per_method", "median", "successive_halving", "hyperband", "none"] = Field(
        "median",
        description="'median_per_method': a trial is compared only with trials of its own method; 'median': with "
        "all trials; 'successive_halving' / 'hyperband': rungs at epochs 1, 3, 9, ...; 'none'",
    )
    pruner_startup_trials: int = Field(
        5, ge=0, description="medians: completed trials (per method for median_per_method) before pruning starts"
    )
    pruner_warmup_epochs: int = Field(
        0, ge=0, description="medians: epochs every trial runs before it may be pruned (0: prunable after epoch 1)"
    )
    sampler_seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed of the TPE sampler; a worker adds its --rank, and a process joining a study that already "
        "holds trials derives a fresh seed from it, the rank and the trial count",
    )
    trial_seed: int = Field(0, ge=0, le=MAX_SEED, description="trial n trains with seed trial_seed + n")
    teacher_modes: list[Literal["cached", "consistent"]] = Field(
        ["cached"],
        description="'cached': teacher outputs computed once on un-augmented images (fast); 'consistent': "
        "the student trains on augmented batches and the teacher runs on the very same batch (Beyer et al. "
        "2022). Two entries make the mode a searched parameter.",
    )

    @field_validator("teacher_modes")
    @classmethod
    def _modes(cls, modes: list[str]) -> list[str]:
        if not modes or len(set(modes)) != len(modes):
            raise ValueError("list 'cached', 'consistent' or both, each once")
        return modes

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, names: list[str]) -> list[str]:
        allowed = searchable_method_names()
        if not names:
            raise ValueError(f"list at least one method; known methods: {', '.join(allowed)}")
        for name in names:
            if name not in allowed:
                raise ValueError(f"unknown method {name!r}; known methods: {', '.join(allowed)}")
        if len(set(names)) != len(names):
            raise ValueError("a method is listed twice")
        return names


class FinalSpec(_Section):
    """The final, honest comparison on the test split."""

    seeds: int = Field(3, ge=1, description="retrain best and baseline students with this many seeds")
    students: Literal["each", "best"] = Field(
        "each",
        description="'each': retrain the best trial of each method; 'best': only the best trial of the study "
        "(more seeds for the same time)",
    )
    first_seed: int = Field(
        1000,
        ge=0,
        le=MAX_SEED,
        description="the students train with seeds first_seed, first_seed + 1, ... (seeds of them)",
    )
    baselines: list[Literal["scratch", "pseudo_label", "untuned_kd"]] = Field(
        ["scratch", "pseudo_label", "untuned_kd"],
        description="the baselines retrained beside the tuned students: scratch (required: every Δ pairs with it), "
        "pseudo_label (when the pool has unlabeled images), untuned_kd (KD at the fixed recipe untuned_kd: did "
        "tuning pay?)",
    )
    untuned_kd: dict[str, float] = Field(
        {"temperature": 4.0, "alpha": 0.1},
        description="the untuned KD recipe of the untuned_kd baseline (mdistiller's T = 4, alpha = 0.1; the PyTorch "
        "tutorial's is T = 2, alpha = 0.75, Keras's T = 10, alpha = 0.1)",
    )

    @field_validator("baselines")
    @classmethod
    def _scratch_first(cls, value: list[str]) -> list[str]:
        if "scratch" not in value:
            raise ValueError("must include 'scratch': every student's Δ is paired with the scratch student")
        return list(dict.fromkeys(value))

    @field_validator("untuned_kd")
    @classmethod
    def _kd_params(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != {"temperature", "alpha"}:
            raise ValueError(f"needs exactly temperature and alpha (kd's parameters), got {sorted(value)}")
        if value["temperature"] <= 0 or not 0 <= value["alpha"] <= 1:
            raise ValueError("temperature must be > 0 and alpha in [0, 1]")
        return value


class RuntimeSpec(_Section):
    """Where and how the study runs: device, threads, caches, shared artifacts, trials at once, heartbeats. These
    settings may differ between the runs and workers of one study (they do not change what a trial measures)."""

    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")
    cache_dir: Path | None = Field(
        None,
        description="cache folder for trained teachers (with their outputs) and decoded images (default: "
        "$KDSEARCH_CACHE, else ~/.cache/kdsearch)",
    )
    artifact_store: str | None = Field(
        None,
        description="where the study's teacher is shared with its other workers: a folder, or s3://bucket/prefix "
        "(boto3; endpoint and credentials from the AWS_* variables); default: <output_dir>/artifacts for SQLite and "
        "journal storages, none for PostgreSQL (each machine builds the teacher and must get the recorded one)",
    )
    trials_per_device: int | Literal["auto"] = Field(
        1,
        description="trials trained at once per process (1 or more), stacked as one model (vmap): 1 trains one at a "
        "time; 'auto' "
        "picks K on a GPU from a short probe of throughput and memory, 1 on a CPU",
    )
    compile: bool = Field(
        False,
        description="train the student's forward (and its backward) through torch.compile: compiled once per "
        "architecture and batch shape per process and reused by every trial (feature methods and stacked trials "
        "stay eager); dropout then draws other masks than eager with the same seed. benchmarks/bench_compile.py "
        "measures whether it pays",
    )
    heartbeat_interval: int = Field(
        10, ge=0, description="seconds between a running trial's heartbeats (SQLite/PostgreSQL storages; 0: off)"
    )
    grace_period: int = Field(
        30,
        ge=1,
        description="seconds without a heartbeat after which a running trial is FAILED and retried (must exceed "
        "heartbeat_interval)",
    )
    max_retry: int = Field(2, ge=0, description="how often a trial whose worker died is re-run with the same params")
    python_path: list[Path] = Field(
        [],
        description="folders searched for import-path models and data factories, besides the study file's folder "
        "and the working directory (relative ones: to the study file)",
    )

    @field_validator("trials_per_device")
    @classmethod
    def _positive_k(cls, k: int | str) -> int | str:
        if isinstance(k, int) and k < 1:
            raise ValueError(f"trials_per_device must be 1 or more, or 'auto' (got {k})")
        return k

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> "RuntimeSpec":
        if self.heartbeat_interval and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval})"
            )
        return self


class StudySpec(_Section):
    """One study: data, teacher, student, search space, final comparison, runtime."""

    name: str = Field("fashion_mnist", description="the study's name (also the folder runs/<name>)")
    output_dir: Path | None = Field(
        None, description="where study.db, report.html, students/, artifacts/ and workers/ go (default: runs/<name>)"
    )
    storage: str | None = Field(
        None,
        description="Optuna storage URL: sqlite:///path.db, journal:///abs/path.log or postgresql://user:pass@host/db "
        "(default: sqlite:///<output_dir>/study.db)",
    )
    data: DataSpec = DataSpec()
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    search: SearchSpec = SearchSpec()
    methods: dict[str, dict[str, tuple[float, float] | float]] = Field(
        default_factory=dict,
        description="per-method search ranges, e.g. methods.kd.temperature = [0.5, 20]; a number fixes the "
        "parameter (e.g. methods.dkd.warmup_epochs = 2)",
    )
    final: FinalSpec = FinalSpec()
    runtime: RuntimeSpec = RuntimeSpec()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"{value!r} cannot name a study: it also names the folder runs/<name>, so no slashes")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> "StudySpec":
        for method, ranges in self.methods.items():
            info = method_info(method)
            if info is None or method == "scratch":
                raise ValueError(
                    f"methods.{method}: unknown method; known methods: {', '.join(searchable_method_names())}"
                )
            space = info.space
            for param, value in ranges.items():
                low, high = _bounds(value)
                where = f"methods.{method}.{param}"
                if param not in space:
                    raise ValueError(f"{where}: {method} has no parameter {param!r}; it has {', '.join(space)}")
                if not (math.isfinite(low) and math.isfinite(high) and max(abs(low), abs(high)) <= MAX_PARAM):
                    raise ValueError(f"{where}: the range [{low}, {high}] must be finite, within ±{MAX_PARAM:g}")
                if not low <= high:
                    raise ValueError(
                        f"{where}: the range [{low}, {high}] must have low < high (or one number to fix it)"
                    )
                if param == "alpha" and not (0.0 <= low and high <= 1.0):
                    raise ValueError(f"{where}: alpha weights the hard-label loss and must lie in [0, 1]")
                if space[param].log and low <= 0:
                    raise ValueError(f"{where}: this parameter is searched on a log scale; use a low bound > 0")
                if param == "warmup_epochs" and low < 0:
                    raise ValueError(f"{where}: warm-up epochs must be >= 0 (0: no warm-up)")
        d = self.data
        if d.train_limit and d.val_size + d.labeled + d.unlabeled > d.train_limit:
            raise ValueError(
                f"data: val_size + labeled + unlabeled = {d.val_size + d.labeled + d.unlabeled} "
                f"exceeds train_limit = {d.train_limit}"
            )
        return self

    def method_space(self, method: str) -> dict[str, ParamRange]:
        """The search ranges of ``method``: its defaults, overridden by ``[methods.<method>]``."""
        info = method_info(method)
        if info is None:
            raise KdsearchError(f"unknown method {method!r}; known methods: {', '.join(method_names())}")
        space = dict(info.space)
        for param, value in self.methods.get(method, {}).items():
            low, high = _bounds(value)
            space[param] = ParamRange(low, high, space[param].log)
        return space

    def resolved_output_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

    def resolved_storage(self) -> str:
        """The Optuna storage URL: the spec's, else ``sqlite:///<output_dir>/study.db``."""
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.resolved_output_dir() / 'study.db').resolve()}"


def _bounds(value: tuple[float, float] | float) -> tuple[float, float]:
    """``[low, high]`` as given, or ``(v, v)`` for a fixed number."""
    return (float(value), float(value)) if isinstance(value, (int, float)) else (float(value[0]), float(value[1]))
