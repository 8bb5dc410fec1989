"""What a study stores about its teacher and its final comparison, as typed records.

The search writes them as study user attributes (plain JSON-able dicts, ``Record.to_attr``); the report, the
dashboard, ``export`` and the Python API read them back with ``read`` (a record that does not parse is one
line naming the attribute and the fix). Fields added in later versions have defaults, so a study written by
an earlier kdsearch still reads. No torch here.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, TypeVar

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config.spec import COST_NAMES
from ..errors import KdsearchError, first_line
from .study import COSTS_ATTR, FINAL_ATTR, RECORD_ATTR, TEACHER_ATTR

R = TypeVar("R", bound="Record")

NEW_STUDY = "use the kdsearch version that wrote it, or start a new study with --study NEW_NAME"
BASELINES = ("scratch", "pseudo_label")  # the final comparison's students that no trial chose


class Record(BaseModel):
    """A stored record: unknown keys (from another kdsearch version) are ignored; the instances are frozen."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_attr(self) -> dict[str, Any]:
        """The record as a study user attribute (Optuna stores it as JSON; NaN stays NaN)."""
        return self.model_dump()

    @classmethod
    def from_attr(cls: type[R], value: Any, *, what: str, fix: str) -> R:
        """Parse a stored attribute; KdsearchError naming ``what`` and the ``fix`` when it is not such a record."""
        try:
            return cls.model_validate(value)
        except ValidationError as err:
            raise KdsearchError(
                f"the study's stored {what} is not readable by this kdsearch ({first_line(err)}); {fix}"
            ) from None


class Scores(Record):
    """Test accuracy and one-vs-rest macro AUC."""

    accuracy: float
    auc: float


class SeedRun(Scores):
    """One retrained student: its seed and its test scores."""

    seed: int


class Candidate(Record):
    """A student the final comparison retrains: a method's best trial, or a baseline (``trial`` None)."""

    label: str
    method: str
    params: dict[str, float] = Field(default_factory=dict)
    trial: Optional[int] = None
    teacher_mode: str = "cached"
    baseline: Optional[str] = None  # "untuned_kd": a distillation method at a fixed recipe, not a trial's
    student: Optional[str] = None  # the candidate student ([[student.candidates]] name); None: the study's one

    @property
    def is_scratch(self) -> bool:
        return self.method == "scratch"

    @property
    def is_baseline(self) -> bool:
        """Scratch, pseudo-label or untuned KD: kept for comparison, not shipped as a distilled student."""
        return self.method in BASELINES or self.baseline is not None


class CandidateRuns(Candidate):
    """A candidate with its seeds' test scores."""

    runs: list[SeedRun] = Field(default_factory=list)


class Cost(Record):
    """Inference cost of one architecture (``metrics.cost_row``)."""

    params: int
    size_mb: float
    flops: float
    latency_ms: float
    throughput: float


COST_FIELDS = COST_NAMES  # what a front's x axis may be
COST_LABELS = {
    "params": "parameters",
    "flops": "FLOPs per image",
    "size_mb": "saved size (MB)",
    "latency_ms": "PyTorch latency (ms, batch 1)",
    "onnx_latency_ms": "ONNX Runtime latency (ms, batch 1)",
}


class StudentCost(Cost):
    """One architecture's cost (``ship.costs``): ``Cost``'s PyTorch figures on the CPU, the same in ONNX Runtime
    (None when it does not export), and PyTorch latency on the study's GPU when it ran on one."""

    arch: str = ""
    arch_args: dict[str, Any] = Field(default_factory=dict)
    onnx_latency_ms: Optional[float] = None
    onnx_throughput: Optional[float] = None
    device_latency_ms: Optional[float] = None
    onnx_error: Optional[str] = None

    def value(self, field: str) -> float | None:
        """The cost named ``field`` (one of ``COST_FIELDS``)."""
        return getattr(self, field)


class StudentCosts(Record):
    """What each candidate student of a study (and its teacher) costs, measured once per study on ``hardware``:
    medians of ``repeats`` timings after warm-up."""

    hardware: str = "?"
    repeats: int = 0
    teacher: Optional[StudentCost] = None
    students: dict[str, StudentCost] = Field(default_factory=dict)

    @classmethod
    def read(cls, study: optuna.Study) -> StudentCosts | None:
        value = study.user_attrs.get(COSTS_ATTR)
        fix = "it is measured again when missing: delete it with a new study (--study NEW_NAME)"
        return None if value is None else cls.from_attr(value, what=f"student costs ({COSTS_ATTR!r})", fix=fix)

    def save(self, study: optuna.Study) -> None:
        study.set_user_attr(COSTS_ATTR, self.to_attr())


class ExportedFiles(Record):
    """Where a shipped student's files are (paths relative to ``base``) and how that student scored."""

    base: Optional[str] = None  # absolute; None: relative to the report's folder
    folder: str
    files: dict[str, str] = Field(default_factory=dict)
    sizes: dict[str, int] = Field(default_factory=dict)
    seed: Optional[int] = None
    onnx_max_abs_diff: Optional[float] = None
    test: Optional[Scores] = None


class FinalComparison(Record):
    """The final comparison on the test split (``search.final_comparison``): every candidate over the same
    seeds, the teacher, the cost table; ``run`` > 1 when the test split was scored before."""

    split: Literal["test"] = "test"
    objective: Optional[str] = None
    seeds: list[int] = Field(default_factory=list)
    students: list[CandidateRuns] = Field(default_factory=list)
    teacher: Optional[Scores] = None
    cost: dict[str, Cost] = Field(default_factory=dict)
    n_complete_trials: Optional[int] = None
    run: int = 1
    earlier_runs_trials: list[int] = Field(default_factory=list)
    exports: dict[str, ExportedFiles] = Field(default_factory=dict)  # method (or candidate) → its shipped student
    # with [[student.candidates]]: their costs, the validation front that was retrained, why the others were not
    costs: Optional[StudentCosts] = None
    front: list[str] = Field(default_factory=list)
    off_front: dict[str, str] = Field(default_factory=dict)
    front_cost: str = "params"
    within_pp: float = 1.0

    @classmethod
    def read(cls, study: optuna.Study) -> FinalComparison | None:
        """The study's last final comparison, or None when it has none yet."""
        value = study.user_attrs.get(FINAL_ATTR)
        fix = "run 'kdsearch report' to compute it again, or use the kdsearch version that wrote it"
        return None if value is None else cls.from_attr(value, what=f"final comparison ({FINAL_ATTR!r})", fix=fix)

    @classmethod
    def next_run_of(cls, study: optuna.Study) -> tuple[int, list[int]]:
        """(run number, trials each earlier run saw) for a new final comparison of ``study``. An earlier one that
        does not read still scored the test split: this one is a re-run (how many trials it saw is unknown)."""
        try:
            previous = cls.read(study)
        except KdsearchError:
            return 2, []
        return previous.next_run() if previous else (1, [])

    def save(self, study: optuna.Study) -> None:
        study.set_user_attr(FINAL_ATTR, self.to_attr())

    def next_run(self) -> tuple[int, list[int]]:
        """(run number, trials seen by each earlier run) for a comparison that follows this one."""
        return self.run + 1, [*self.earlier_runs_trials, *([self.n_complete_trials] if self.n_complete_trials else [])]


TEST_EXPORTS_ATTR = "test_exports"  # study user attr: how many exports have scored the test split


def count_test_scoring(study: optuna.Study) -> int:
    """Record one more scoring of the test split by an export; its number among all the study's scorings of test
    (its final comparisons, then its exports): 2 or more is a re-run of the test split."""
    exports = int(study.user_attrs.get(TEST_EXPORTS_ATTR, 0)) + 1
    study.set_user_attr(TEST_EXPORTS_ATTR, exports)
    final = study.user_attrs.get(FINAL_ATTR)
    finals = int(final.get("run", 1)) if isinstance(final, dict) else 0
    return finals + exports


class TeacherScores(Record):
    """The teacher's validation scores (test is scored only in the final comparison)."""

    val_accuracy: float
    val_auc: float

    @classmethod
    def read(cls, study: optuna.Study) -> TeacherScores | None:
        value = study.user_attrs.get(TEACHER_ATTR)
        return None if value is None else cls.from_attr(value, what=f"teacher scores ({TEACHER_ATTR!r})", fix=NEW_STUDY)


class Builder(Record):
    """The process that built a study's teacher."""

    host: str = "?"
    pid: Optional[int] = None


class TeacherRecord(Record):
    """The study's one teacher (``teacher_share``): its weights' sha256, the key of its settings, where its
    artifact is (``artifact_id`` None when there was no store to upload to), who built it and when."""

    artifact_id: Optional[str] = None
    sha256: str
    file_sha256: Optional[str] = None
    key: str
    metrics: TeacherScores
    store: Optional[str] = None
    path: Optional[str] = None
    by: Builder = Field(default_factory=Builder)
    at: Optional[str] = None

    @classmethod
    def read(cls, study: optuna.Study) -> TeacherRecord | None:
        value = study.user_attrs.get(RECORD_ATTR)
        return None if value is None else cls.from_attr(value, what=f"teacher record ({RECORD_ATTR!r})", fix=NEW_STUDY)

    def save(self, study: optuna.Study) -> None:
        """Record this teacher and its validation scores on the study."""
        study.set_user_attr(TEACHER_ATTR, self.metrics.to_attr())
        study.set_user_attr(RECORD_ATTR, self.to_attr())
