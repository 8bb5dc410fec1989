"""The prepared GPU check (benchmarks/gpu_check.sh) runs end to end on CPU in its --dry-run mode, so it cannot rot
before a GPU is lent: every part leaves its JSON and status, and the summary names each one."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import REPO


@pytest.mark.slow
def test_the_gpu_check_runs_dry_on_cpu_and_summarises_every_part(tmp_path, fashion_root):
    out = tmp_path / "check"
    env = {**os.environ, "KDSEARCH_CACHE": str(tmp_path / "cache")}  # not the user's cache
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for part in ("trials_per_device", "compile", "study_k_auto"):
        status = json.loads((out / f"{part}.status.json").read_text())
        assert status["rc"] == 0 and not status["timed_out"], (part, (out / f"{part}.log").read_text()[-2000:])
    assert json.loads((out / "trials_per_device.json").read_text())["rows"]
    assert json.loads((out / "compile.json").read_text())["compile_s"] >= 0
    summary = json.loads((out / "summary.json").read_text())
    parts = {part: (state, figures) for part, state, figures in summary["parts"]}
    assert set(parts) == {"trials_per_device", "compile", "study_k_auto", "study_workers", "soak"}
    assert parts["study_k_auto"][0].startswith("ok") and "2 trials finished" in parts["study_k_auto"][1]
    assert parts["study_workers"][0] == "skipped" and parts["soak"][0] == "skipped"
    assert "| part | status | figures |" in done.stdout


def test_the_gpu_check_refuses_without_a_gpu_or_with_an_unknown_option(tmp_path):
    script = str(REPO / "benchmarks" / "gpu_check.sh")
    bad = subprocess.run(["bash", script, str(tmp_path / "x"), "--fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr
    no_gpu = subprocess.run(
        ["bash", script, str(tmp_path / "y")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert no_gpu.returncode == 2 and "no CUDA device visible" in no_gpu.stderr
