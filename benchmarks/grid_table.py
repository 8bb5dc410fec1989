"""What the tabular benchmarks (``bench_search.py``, ``bench_front.py``) share: the study's data and teacher from a
spec, and a table of students trained to the end with their per-epoch validation scores, kept in one JSON file
that a killed run resumes (points already there are skipped)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna


def grid_data(spec_path: str, overrides: list[str], threads: int | None):
    """(spec, prepared, study data) of ``spec_path`` with ``--set`` ``overrides``: the teacher trained or cached,
    candidate students' costs measured (not stored: there is no study)."""
    from kdsearch.prepare import prepare, study_data
    from kdsearch.progress import Console
    from kdsearch.runner import load_study_spec, with_runtime

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, _ = load_study_spec(Path(spec_path), overrides=overrides)
    spec = with_runtime(spec, threads=threads)
    console = Console(bars=False)
    prepared = prepare(spec, console)
    return spec, prepared, study_data(prepared, console)


def open_table(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The table at ``out`` (empty when there is none yet), with ``meta`` as its header."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.is_file() else {}
    table.setdefault("points", {})
    table["meta"] = meta
    return table


def train_points(
    table: dict[str, Any], out: Path, todo: Sequence[tuple[str, dict[str, Any], Callable[[], list]]]
) -> None:
    """Train each ``(key, fields, train)`` of ``todo`` (``train()`` returns the epoch history), store ``fields`` with
    its per-epoch accuracy and AUC and seconds under ``key``, and rewrite ``out`` after each (atomically)."""
    for n, (key, fields, train) in enumerate(todo, 1):
        start = time.perf_counter()
        history = train()
        seconds = time.perf_counter() - start
        table["points"][key] = {
            **fields,
            "accuracy": [r.accuracy for r in history],
            "auc": [r.auc for r in history],
            "seconds": seconds,
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(out)  # a killed run keeps every finished point
        shown = " ".join(str(v) for v in fields.values())
        print(f"[{n}/{len(todo)}] {shown}: val accuracy {history[-1].accuracy:.4f} ({seconds:.1f} s)", flush=True)
