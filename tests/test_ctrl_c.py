"""Ctrl-C within seconds, whatever the load (issue 18, item 5).

A signal whose KeyboardInterrupt Python swallows (it lands in a finalizer) still stops training within a step,
and SIGINT at random moments of a tiny study (teacher, trials, final comparison, export, report), with two
CPU-burning processes beside it, ends each run within 10 s with code 130, one message, no RUNNING trial and
no half-written file. CI sends 4 signals; ``KDSEARCH_CTRL_C_MOMENTS=20`` sends 20 (``make test`` does not).
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import safetensors.torch
import torch
from helpers import started
from torch import nn

from kdsearch.data import Split
from kdsearch.distill.methods import build_method
from kdsearch.distill.train import TrainSet, TrialPlan, fit
from kdsearch.signals import StopSignals

KDSEARCH = [sys.executable, "-m", "kdsearch.cli"]
EXIT_WITHIN_S = 10.0


class SignalInFinalizer:
    """Sends this process SIGINT from its ``__del__``: the handler's KeyboardInterrupt is raised inside the
    finalizer, where Python prints "Exception ignored" and drops it."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside the finalizer


def test_a_signal_swallowed_in_a_finalizer_still_stops_training_within_a_step():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    train = TrainSet(x, y, torch.ones(256, dtype=torch.bool))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    plan = TrialPlan(build_method("scratch"), {}, 0, train, epochs=50, batch_size=8, lr=1e-3)
    steps = []

    def on_step() -> None:
        steps.append(1)
        if len(steps) == 3:
            SignalInFinalizer()  # made and dropped at once: its __del__ runs now
            gc.collect()

    with StopSignals() as stop, pytest.raises(KeyboardInterrupt):
        fit(model, plan, Split(x[:32], y[:32]), on_step=on_step)
    assert stop.requested
    assert len(steps) <= 4, f"training went on for {len(steps)} steps after the signal"


def test_the_swallowed_interrupt_prints_no_traceback_and_other_unraisables_still_do():
    """Python reports an exception raised in a finalizer through ``sys.unraisablehook`` ("Exception ignored in
    ... Traceback"); for the stop signal's KeyboardInterrupt that is noise (the stop still happens), for
    anything else it is not."""
    code = (
        "import os, signal, sys, time\n"
        "from kdsearch.signals import StopSignals\n"
        "class Bomb:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
        "class Broken:\n"
        "    def __del__(self):\n"
        "        raise ValueError('a real finalizer bug')\n"
        "with StopSignals() as stop:\n"
        "    Bomb(); Broken()\n"
        "    print('requested', stop.requested)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "requested True" in proc.stdout
    assert "KeyboardInterrupt" not in proc.stderr
    assert "ValueError: a real finalizer bug" in proc.stderr


@contextmanager
def cpu_burners(n: int = 2) -> Iterator[None]:
    """``n`` processes spinning on the CPU for the block's duration (the "machine under load")."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _running_trials(db: Path) -> int:
    if not db.is_file():
        return 0
    with closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]


def _check_files_whole(folder: Path) -> None:
    """No temporary file left, and every file a user or a later run reads is whole."""
    leftovers = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert not leftovers, f"half-written files left: {leftovers}"
    for p in folder.rglob("*.pt"):
        if "torchscript" in p.name:
            torch.jit.load(str(p))
        else:
            torch.load(p, weights_only=True)
    for p in folder.rglob("*.safetensors"):
        safetensors.torch.load_file(str(p))
    for p in folder.rglob("card.json"):
        json.loads(p.read_text())
    for p in folder.rglob("report.html"):
        assert p.read_text().rstrip().endswith("</html>"), f"{p} is cut short"


def test_a_signal_after_the_last_command_finished_is_ignored_not_a_kill_by_sigint():
    """The console entry's StopSignals is the process's last: once its command is done, SIGINT and TERM are
    ignored while the process shuts down (the default handler would end a finished run with exit -2)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with StopSignals():
            pass
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # a nested or in-process use restores
        with StopSignals(last=True) as stop:
            assert signal.getsignal(signal.SIGINT) == stop._handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)  # ignored: no KeyboardInterrupt here
        time.sleep(0.05)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _spec(write_spec, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    spec = write_spec(name, epochs=1, cache=folder / "cache")  # a fresh cache: the teacher trains in every run
    text = spec.read_text().replace(str(tmp_path / "run"), str(folder / "run"))
    moved = folder / spec.name
    moved.write_text(text)
    spec.unlink()
    return moved


@pytest.mark.slow
def test_sigint_at_random_moments_of_a_study_under_load_exits_within_seconds(write_spec, tmp_path):
    moments = int(os.environ.get("KDSEARCH_CTRL_C_MOMENTS", "4"))
    rng = random.Random(18)
    with cpu_burners(2):
        # one uninterrupted run under the same load: how long a run lasts after its first line
        spec = _spec(write_spec, tmp_path, "whole")
        log = tmp_path / "whole.log"
        with started([*KDSEARCH, "run", "--spec", str(spec), "--trials", "3"], log, with_stdout=True) as proc:
            while "data:" not in log.read_text() and proc.poll() is None:
                time.sleep(0.05)
            began = time.monotonic()
            proc.wait(timeout=600)
        length = time.monotonic() - began
        assert proc.returncode == 0, log.read_text()

        hit = []
        for i in range(moments):
            spec = _spec(write_spec, tmp_path, f"cut{i}")
            folder = spec.parent
            log = folder / "out.log"
            delay = rng.uniform(0.0, 0.9 * length)
            with started([*KDSEARCH, "run", "--spec", str(spec), "--trials", "3"], log, with_stdout=True) as proc:
                while "data:" not in log.read_text() and proc.poll() is None:
                    time.sleep(0.05)
                time.sleep(delay)
                if proc.poll() is not None:
                    continue  # it finished first: not a moment
                last_line = log.read_text().replace("\r", "\n").strip().splitlines()[-1]
                proc.send_signal(signal.SIGINT)
                sent = time.monotonic()
                try:
                    proc.wait(timeout=EXIT_WITHIN_S)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"no exit within {EXIT_WITHIN_S} s of SIGINT {delay:.1f} s in (at {last_line!r})")
                took = time.monotonic() - sent
            out = log.read_text()
            if proc.returncode == 0 and "add trials with" in out and "interrupted" not in out:
                continue  # the signal came after the run's work was done (while it shut down): ignored, not a moment
            assert proc.returncode == 130, f"exit {proc.returncode} after SIGINT at {last_line!r}:\n{out}"
            assert out.count("interrupted") == 1 and "Traceback" not in out and "Exception ignored" not in out, out
            assert _running_trials(folder / "run" / "study.db") == 0, f"a RUNNING trial after SIGINT at {last_line!r}"
            _check_files_whole(folder)
            hit.append((round(delay, 1), round(took, 1), last_line[:40]))
    assert len(hit) >= max(1, moments // 2), f"too few runs were still going when the signal came: {hit}"
    print("SIGINT moments (s in, s to exit, where):", hit)
