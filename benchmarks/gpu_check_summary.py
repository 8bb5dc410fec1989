#!/usr/bin/env python
"""The summary table of ``benchmarks/gpu_check.sh``: one row per part from the JSON files it left in OUT_DIR
(status, seconds, the figures that matter), written to ``OUT_DIR/summary.json`` and printed as Markdown for
``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/gpu_check_summary.py OUT_DIR DEVICE
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _study(folder: Path) -> str:
    """Finished trials of the study kdsearch left in ``folder`` (its SQLite file), with trials/hour."""
    import optuna

    db = folder / "study.db"
    if not db.is_file():
        return "no study.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if not names:
        return "no study"
    trials = optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished() and t.datetime_complete and t.datetime_start]
    if not finished:
        return "no finished trial"
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    rate = f", {len(finished) / span * 3600:.0f} trials/h over the trials' span" if span > 0 else ""
    log = folder.with_suffix(".log")
    lines = log.read_text().splitlines() if log.is_file() else []
    said = [line for line in lines if line.startswith("trials_per_device = auto")]
    k = said[0].split(": ", 1)[1] if said else "K = 1 (no stacking line: auto on CPU, or K = 1)"
    return f"{len(finished)} trials finished{rate}; {k}"


def rows(out: Path) -> list[tuple[str, str, str]]:
    """(part, status, figures) for each part of the check."""
    table = []
    for part in ("trials_per_device", "compile", "study_k_auto", "study_workers", "soak"):
        status = _read(out / f"{part}.status.json")
        result = _read(out / f"{part}.json")
        if status is None:
            table.append((part, "skipped", (result or {}).get("skipped", "not run")))
            continue
        state = "timed out" if status["timed_out"] else ("ok" if status["rc"] == 0 else f"failed (rc {status['rc']})")
        state += f", {status['seconds']:.0f} s of {status['limit_s']} s"
        figures = ""
        if part == "trials_per_device" and result:
            best = max(result.get("rows", []), key=lambda r: r.get("trials_per_hour", 0), default=None)
            if best:
                figures = f"best: K = {best['k']} {best['path']}, {best['trials_per_hour']:.0f} trials/h ({best['ratio']:.2f}x K = 1)"
        elif part == "compile" and result:
            figures = (
                f"compile {result.get('compile_s', float('nan')):.1f} s, steady eager/compiled "
                f"{result.get('steady_ratio', float('nan')):.2f}, break-even {result.get('break_even_trials')} trials"
            )
        elif part.startswith("study_"):
            figures = _study(out / part)
        table.append((part, state, figures or f"see {part}.log"))
    return table


def main() -> int:
    out, device = Path(sys.argv[1]), sys.argv[2]
    name = device
    if device.startswith("cuda"):
        import torch

        name = f"{torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}"
    table = rows(out)
    (out / "summary.json").write_text(
        json.dumps({"device": name, "machine": platform.node(), "parts": table}, indent=1)
    )
    print(f"\ngpu_check on {name}:\n\n| part | status | figures |\n|---|---|---|")
    for part, state, figures in table:
        print(f"| {part} | {state} | {figures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
