"""``StudySpec``: the typed, validated description of one study, loaded from TOML.

Every field has a default that gives the Fashion-MNIST study; unknown keys are errors, and a
bad value fails at load time with a message that names the field (``search.objective: ...``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import KdsearchError
from .methods import METHODS, ParamRange, searchable_methods
from .models import MODELS

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Section):
    """Where the images come from and how they are split."""

    source: Literal["idx"] = "idx"
    root: Path = Path(DEFAULT_FASHION_MNIST_ROOT)
    val_size: int = Field(5000, ge=1, description="images held out of the training split for validation")
    labeled: int = Field(2000, ge=1, description="training images whose labels the student may use")
    unlabeled: int = Field(8000, ge=0, description="transfer images the student sees through the teacher only")
    train_limit: int = Field(0, ge=0, description="use only the first N training images (0: all)")
    test_limit: int = Field(0, ge=0, description="use only the first N test images (0: all)")
    split_seed: int = 0


class ModelSpec(_Section):
    """An architecture from the registry and how it is trained."""

    arch: str
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS.names())}")
        return name


class TeacherSpec(ModelSpec):
    arch: str = "bn_cnn"
    epochs: int = Field(6, ge=1)
    seed: int = 0


class StudentSpec(ModelSpec):
    arch: str = "light_nn"
    epochs: int = Field(5, ge=1)


class SearchSpec(_Section):
    """The Optuna side: which methods, which objective, which pruner."""

    trials: int = Field(50, ge=1)
    methods: list[str] = ["kd"]
    objective: Literal["accuracy", "auc"] = "accuracy"
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = Field(5, ge=0)
    pruner_warmup_epochs: int = Field(1, ge=0)
    sampler_seed: int = 0
    trial_seed: int = Field(0, description="trial n trains with seed trial_seed + n")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, names: list[str]) -> list[str]:
        allowed = searchable_methods()
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

    seeds: int = Field(3, ge=1, description="retrain best and scratch students with this many seeds")
    first_seed: int = 1000


class RuntimeSpec(_Section):
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")
    cache_dir: Path | None = Field(None, description="teacher cache (default: $KDSEARCH_CACHE or ~/.cache/kdsearch)")


class StudySpec(_Section):
    """One study: data, teacher, student, search space, final comparison, runtime."""

    name: str = "fashion_mnist"
    output_dir: Path | None = Field(None, description="default: runs/<name>")
    storage: str | None = Field(None, description="Optuna storage URL (default: SQLite in output_dir)")
    data: DataSpec = DataSpec()
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    search: SearchSpec = SearchSpec()
    methods: dict[str, dict[str, tuple[float, float]]] = Field(
        default_factory=dict, description="per-method search ranges, e.g. methods.kd.temperature = [0.5, 20]"
    )
    final: FinalSpec = FinalSpec()
    runtime: RuntimeSpec = RuntimeSpec()

    @model_validator(mode="after")
    def _check_ranges(self) -> "StudySpec":
        for method, ranges in self.methods.items():
            if method not in METHODS or method == "scratch":
                raise ValueError(f"methods.{method}: unknown method; known methods: {', '.join(searchable_methods())}")
            space = METHODS.get(method).space
            for param, (low, high) in ranges.items():
                where = f"methods.{method}.{param}"
                if param not in space:
                    raise ValueError(f"{where}: {method} has no parameter {param!r}; it has {', '.join(space)}")
                if not low < high:
                    raise ValueError(f"{where}: the range [{low}, {high}] must have low < high")
                if param == "alpha" and not (0.0 <= low and high <= 1.0):
                    raise ValueError(f"{where}: alpha weights the hard-label loss and must lie in [0, 1]")
                if space[param].log and low <= 0:
                    raise ValueError(f"{where}: this parameter is searched on a log scale; use a low bound > 0")
        d = self.data
        if d.train_limit and d.val_size + d.labeled + d.unlabeled > d.train_limit:
            raise ValueError(
                f"data: val_size + labeled + unlabeled = {d.val_size + d.labeled + d.unlabeled} "
                f"exceeds train_limit = {d.train_limit}"
            )
        return self

    def method_space(self, method: str) -> dict[str, ParamRange]:
        """The search ranges of ``method``: its defaults, overridden by ``[methods.<method>]``."""
        space = dict(METHODS.get(method).space)
        for param, (low, high) in self.methods.get(method, {}).items():
            space[param] = ParamRange(low, high, space[param].log)
        return space

    def resolved_output_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

    def resolved_storage(self) -> str:
        """The Optuna storage URL: the spec's, else ``sqlite:///<output_dir>/study.db``."""
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.resolved_output_dir() / 'study.db').resolve()}"


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and section)"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def spec_from_dict(raw: dict, *, source: str = "spec") -> StudySpec:
    """Validate a dict into a StudySpec; errors become one KdsearchError naming each bad field."""
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as err:
        raise KdsearchError(f"{source}: {_format_validation_error(err)}") from None


def load_spec(path: Path | str) -> StudySpec:
    """Read and validate a study TOML file (KdsearchError on a missing file, bad TOML or bad field)."""
    path = Path(path)
    if not path.is_file():
        raise KdsearchError(
            f"study file {path} not found; pass an existing TOML file (the ready ones are in studies/)"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise KdsearchError(f"{path} is not valid TOML: {err}; fix the line it names") from None
    return spec_from_dict(raw, source=str(path))
