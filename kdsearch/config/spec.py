"""``StudySpec``: the typed, validated description of one study (read from TOML by ``load.py``).

Every field has a default (the data, teacher and student defaults are the Fashion-MNIST study's;
``studies/fashion_mnist.toml`` also sets its search and final comparison); unknown keys are errors, and a
bad value fails at load time with a message that names the field (``search.objective: ...``).
Method and model names are checked against ``catalog`` (no torch), so validating a spec is fast.
The ``[data]`` section lives in ``data_spec.py``, ``[teacher]`` and ``[student]`` in ``model_spec.py``; their
names are importable from here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from ..errors import KdsearchError
from .catalog import ParamRange, method_info, method_names, searchable_method_names
from .data_spec import DEFAULT_FASHION_MNIST_ROOT, SOURCE_FIELDS, DataSpec
from .model_spec import (
    GIVEN_ARCH,
    HF_PATH_PREFIXES,
    HUB_PREFIXES,
    WHOLE_MODEL_ARCHS,
    ModelSpec,
    StudentSpec,
    TeacherSpec,
    hub_kind,
)
from .section import MAX_PARAM, MAX_SEED, Section, is_import_path

CostName = Literal["params", "flops", "size_mb", "latency_ms", "onnx_latency_ms"]  # a candidate's costs
COST_NAMES: tuple[str, ...] = get_args(CostName)  # the same, as names (results.COST_FIELDS)

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "GIVEN_ARCH",
    "HF_PATH_PREFIXES",
    "HUB_PREFIXES",
    "MAX_PARAM",
    "MAX_SEED",
    "SOURCE_FIELDS",
    "WHOLE_MODEL_ARCHS",
    "DataSpec",
    "FinalSpec",
    "ModelSpec",
    "RuntimeSpec",
    "SearchSpec",
    "StudentSpec",
    "StudySpec",
    "TeacherSpec",
    "hub_kind",
    "is_import_path",
]


class SearchSpec(Section):
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
    constraints: dict[CostName, float] = Field(
        {},
        description="budgets for [[student.candidates]], e.g. { onnx_latency_ms = 0.5, params = 1e6 }: a candidate "
        "over any is never sampled (said at start); latencies are medians measured once per study on this CPU",
    )
    objectives: list[str] | None = Field(
        None,
        description="with [[student.candidates]]: the front's two axes, a validation metric and a cost, e.g. "
        '["accuracy", "onnx_latency_ms"] (cost: params, flops, size_mb, latency_ms, onnx_latency_ms); sets '
        "search.objective and final.cost",
    )
    strategy: Literal["per_candidate", "motpe", "nsga2"] = Field(
        "per_candidate",
        description="how the front is searched: 'per_candidate' gives each trial the student with the fewest trials "
        "and maximizes the metric, the pruner comparing a trial only with its own student's (the front: each "
        "candidate's best; the cheapest in benchmarks/RESULTS.md §11); "
        "'motpe' / 'nsga2': a multi-objective Optuna study on search.objectives, every trial trained to the end "
        "(Optuna cannot prune those)",
    )
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


class FinalSpec(Section):
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
    within_pp: float = Field(
        1.0,
        ge=0,
        description="with [[student.candidates]]: the headline names the smallest student whose mean test accuracy is "
        "within this many percentage points of the teacher's",
    )
    cost: CostName = Field(
        "params",
        description="with [[student.candidates]]: the cost the validation front and the headline's 'smallest' use "
        "(the report's figure can switch between all of them)",
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


class RuntimeSpec(Section):
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
    max_in_flight: int = Field(
        0,
        ge=0,
        description="trials running at once across all workers, at most (0: what the storage holds: 256 on a SQLite "
        "file, as measured; no bound on a journal file, PostgreSQL or the proxy)",
    )
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


class StudySpec(Section):
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
        self._check_objectives()
        if self.search.constraints and not self.student.candidates:
            raise ValueError(
                "search.constraints choose among [[student.candidates]]; list candidates, or drop the constraints"
            )
        d = self.data
        if d.train_limit and d.val_size + d.labeled + d.unlabeled > d.train_limit:
            raise ValueError(
                f"data: val_size + labeled + unlabeled = {d.val_size + d.labeled + d.unlabeled} "
                f"exceeds train_limit = {d.train_limit}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _objectives_set_the_cost(cls, raw: object) -> object:
        """``search.objectives = [metric, cost]`` fills ``search.objective`` and ``final.cost`` where not given."""
        if not isinstance(raw, dict):
            return raw
        search = raw.get("search")
        objectives = search.get("objectives") if isinstance(search, dict) else None
        if not isinstance(objectives, list) or len(objectives) != 2 or objectives[1] not in COST_NAMES:
            return raw  # _check_objectives says what is wrong
        raw = dict(raw)
        raw["search"] = {"objective": objectives[0], **search}
        final = raw.get("final")
        if final is None or isinstance(final, dict):
            raw["final"] = {"cost": objectives[1], **(final or {})}
        return raw

    def _check_objectives(self) -> None:
        s = self.search
        if s.strategy != "per_candidate" and s.objectives is None:
            raise ValueError(
                f"search.strategy = {s.strategy!r} searches search.objectives; set them, e.g. "
                'objectives = ["accuracy", "onnx_latency_ms"] (or drop the strategy)'
            )
        if s.objectives is None:
            return
        costs = ", ".join(COST_NAMES)
        if len(s.objectives) != 2 or s.objectives[0] not in ("accuracy", "auc") or s.objectives[1] not in COST_NAMES:
            raise ValueError(
                f"search.objectives = {s.objectives}: name a validation metric (accuracy or auc) and a cost "
                f'({costs}), e.g. ["accuracy", "onnx_latency_ms"]'
            )
        if not self.student.candidates:
            raise ValueError(
                "search.objectives trade accuracy against the cost of [[student.candidates]]; list candidates, or "
                "drop search.objectives"
            )
        if s.objective != s.objectives[0] or self.final.cost != s.objectives[1]:
            raise ValueError(
                f"search.objectives = {s.objectives} disagrees with search.objective = {s.objective!r} / final.cost "
                f"= {self.final.cost!r}; drop those two (the objectives set them)"
            )
        if s.strategy != "per_candidate" and s.pruner != "none" and "pruner" in s.model_fields_set:
            raise ValueError(
                f"search.strategy = {s.strategy!r} is a multi-objective study, which Optuna cannot prune, but "
                f'search.pruner = {s.pruner!r}; set pruner = "none", or strategy = "per_candidate" (prunes per '
                "student)"
            )

    @property
    def multi_objective(self) -> bool:
        """Whether trials return (metric, cost) to a multi-objective study (``search.strategy`` motpe / nsga2)."""
        return self.search.strategy != "per_candidate"

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
