"""What the device benchmarks share: the study's data and teacher from a spec with overrides, the device's name,
CUDA sync for timings, and the header of their JSON result (where, with what, on which data)."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # use this checkout's kdsearch even without `pip install -e .`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from kdsearch.config.load import apply_overrides, load_spec, spec_from_dict  # noqa: E402
from kdsearch.config.spec import StudySpec  # noqa: E402
from kdsearch.prepare import prepare, study_data  # noqa: E402
from kdsearch.progress import Console  # noqa: E402
from kdsearch.search.objective import StudyData  # noqa: E402


@dataclass
class Bench:
    """A benchmark's study: spec (with ``overrides``), trials' data, device and its name, CPU threads."""

    spec_path: str
    overrides: list[str]
    spec: StudySpec
    data: StudyData
    device: torch.device
    device_name: str
    threads: int

    def header(self) -> dict[str, Any]:
        """Where and on what the benchmark ran: the head of its JSON result."""
        path = Path(self.spec_path).resolve()
        return {
            "device": str(self.device),
            "device_name": self.device_name,
            "threads": self.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "spec": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else self.spec_path,
            "overrides": self.overrides,
            "student": self.spec.student.arch,
            "batch_size": self.spec.student.batch_size,
            "steps_per_epoch": self.data.steps,
            "epochs_per_trial": self.spec.student.epochs,
        }


def prepare_bench(spec_path: str, overrides: list[str], threads: int) -> Bench:
    """Load the spec with ``overrides`` and ``threads`` (0: every core), the data (through the decode cache) and
    the (cached) teacher with ``kdsearch.prepare``, as a study does."""
    spec = spec_from_dict(
        apply_overrides(load_spec(spec_path).model_dump(mode="json"), [*overrides, f"runtime.threads={threads}"])
    )
    quiet = Console(echo=lambda text, err=False: None, bars=False)
    prepared = prepare(spec, quiet)
    data = study_data(prepared, quiet)
    device = prepared.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    return Bench(spec_path, overrides, spec, data, device, name, torch.get_num_threads())
