#!/usr/bin/env python
"""Seconds per trial of the default study's student, eager vs compiled (``runtime.compile``), compile time included.

The default study's data, teacher (cached logits), student (LightNN), batch size, learning rate, steps
per epoch and epochs; pruning off, so every trial runs all of ``student.epochs``. Trial i trains a fresh
student with seed ``search.trial_seed + i``, the study's methods in turn and their parameters drawn from
the spec's ranges by a seeded RNG, through ``kdsearch.distill.train.fit`` as ``search.train_student`` calls it for
a cached-teacher trial; both ways train trial i with the same seed, method and parameters. The ways
alternate trial by trial in ABBA order (eager, compiled, compiled, eager, ...), so drifting background
load hits both alike.

Timed: each trial's ``fit`` (training and per-epoch validation). The compiled way's first trial includes
compiling (dynamo tracing, AOTAutograd, Inductor code generation and its C++ build); **compile s** is
that trial minus the median of the later compiled trials. By default Inductor's on-disk cache is a fresh
temporary folder, so the compile is cold, as in a machine's first study; ``--warm-cache`` uses the usual
cache (a later study on the same machine). Not timed: data, teacher, Optuna's bookkeeping, and one
untimed eager warm-up epoch before the first trial.

**ratio** = eager seconds / compiled seconds over all N trials, compile included (above 1: compiling
pays at N trials); **steady ratio** leaves the first compiled trial out of both; **break-even** is the
trial count from which compiling pays (compile s / the per-trial saving), when it saves anything.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_compile.py                  # 50 trials per way on this machine
    .venv/bin/python benchmarks/bench_compile.py --quick          # tiny data, 2 trials, 1 epoch: a smoke run
    .venv/bin/python benchmarks/bench_compile.py --device cuda --trials 50 --json benchmarks/compile/result-cuda.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import REPO, prepare_bench

from kdsearch.config.spec import StudySpec
from kdsearch.distill.train import sync
from kdsearch.search.objective import StudyData, plan_trial, train_plan

QUICK = [
    "data.train_limit=3000",
    "data.labeled=500",
    "data.unlabeled=1500",
    "data.val_size=500",
    "teacher.epochs=1",
    "student.epochs=1",
]
QUICK_TRIALS = 2
DEFAULT_TRIALS = 50
DEFAULT_JSON = REPO / "benchmarks" / "compile" / "result.json"
QUICK_JSON = REPO / "runs" / "bench_compile" / "quick.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(REPO / "studies" / "fashion_mnist.toml"))
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument(
        "--trials", type=int, default=None, help=f"trials per way (default {DEFAULT_TRIALS}; --quick: {QUICK_TRIALS})"
    )
    p.add_argument("--quick", action="store_true", help="tiny data, 1 student epoch, 2 trials: a smoke run")
    p.add_argument("--warm-cache", action="store_true", help="use Inductor's usual on-disk cache (default: a cold one)")
    p.add_argument("--set", action="append", default=[], help="spec override, as kdsearch --set")
    p.add_argument(
        "--json", default=None, help=f"where to write the numbers (default {DEFAULT_JSON}; --quick: {QUICK_JSON})"
    )
    args = p.parse_args(argv)
    if args.trials is not None and args.trials < 2:
        p.error("--trials must be at least 2 (compile time is the first compiled trial minus the later ones)")
    return args


def trial_plan(spec: StudySpec, n: int) -> list[tuple[str, dict[str, float], int]]:
    """(method, params, seed) of each trial: the study's methods in turn, params uniform (log-uniform where the
    range is) in the spec's ranges, drawn by an RNG seeded with the trial's seed."""
    plan = []
    for i in range(n):
        seed = spec.search.trial_seed + i
        method = spec.search.methods[i % len(spec.search.methods)]
        rng = np.random.default_rng(seed)
        params = {}
        for name, r in spec.method_space(method).items():
            if r.log:
                params[name] = float(math.exp(rng.uniform(math.log(r.low), math.log(r.high))))
            else:
                params[name] = float(rng.uniform(r.low, r.high))
        plan.append((method, params, seed))
    return plan


def train_trial(
    data: StudyData, method: str, params: dict[str, float], seed: int, *, compile: bool, epochs: int | None = None
):
    """``search.train_student`` for a cached-teacher trial, with ``fit``'s ``compile`` switch."""
    plan = replace(plan_trial(data, method, params, seed), compile=compile, epochs=epochs or data.spec.student.epochs)
    return train_plan(data, plan)[1]


def timed_trial(
    data: StudyData, method: str, params: dict[str, float], seed: int, compile: bool
) -> tuple[float, float]:
    """(seconds, last epoch's validation accuracy) of one trial."""
    sync(data.device)
    start = time.perf_counter()
    history = train_trial(data, method, params, seed, compile=compile)
    sync(data.device)
    return time.perf_counter() - start, history[-1].accuracy


def summarize(seconds: list[float]) -> dict[str, float]:
    return {
        "total_s": sum(seconds),
        "s_per_trial": sum(seconds) / len(seconds),
        "first_trial_s": seconds[0],
        "median_later_s": statistics.median(seconds[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.trials or (QUICK_TRIALS if args.quick else DEFAULT_TRIALS)
    cold_dir = None
    if not args.warm_cache:  # read by Inductor when it first compiles, i.e. after this
        cold_dir = tempfile.mkdtemp(prefix="kdsearch-bench-compile-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold_dir
    overrides = [*(QUICK if args.quick else []), *args.set, f'runtime.device="{args.device}"']
    bench = prepare_bench(args.spec, overrides, args.threads)
    spec, data, device, name, threads = bench.spec, bench.data, bench.device, bench.device_name, bench.threads
    epochs = spec.student.epochs
    print(f"compile benchmark{' (--quick)' if args.quick else ''}")
    print(
        f"  device {device} ({name}), {threads} threads, torch {torch.__version__}; student {spec.student.arch}, "
        f"batch {spec.student.batch_size}, {data.steps} steps/epoch x {epochs} epochs, pool {len(data.distill_set)}, "
        f"val {len(data.val)}; Inductor cache {'warm (usual)' if args.warm_cache else 'cold (fresh folder)'}"
    )
    print(f"  {n} trials per way, interleaved ABBA; methods {', '.join(spec.search.methods)} in turn", flush=True)

    from torch._dynamo.utils import counters

    plan = trial_plan(spec, n)
    train_trial(data, *plan[0][:2], plan[0][2], compile=False, epochs=1)  # untimed warm-up, eager
    graphs_before = counters["stats"]["unique_graphs"]
    times: dict[bool, list[float]] = {False: [], True: []}
    accs: dict[bool, list[float]] = {False: [], True: []}
    for i, (method, params, seed) in enumerate(plan):
        for compile in (False, True) if i % 2 == 0 else (True, False):
            seconds, acc = timed_trial(data, method, params, seed, compile)
            times[compile].append(seconds)
            accs[compile].append(acc)
        print(
            f"  trial {i + 1}/{n} {method}: eager {times[False][-1]:.2f}s, compiled {times[True][-1]:.2f}s "
            f"(val acc {accs[False][-1]:.4f} / {accs[True][-1]:.4f})",
            flush=True,
        )
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    if cold_dir is not None:
        shutil.rmtree(cold_dir, ignore_errors=True)

    eager, compiled = summarize(times[False]), summarize(times[True])
    compile_s = compiled["first_trial_s"] - compiled["median_later_s"]
    ratio = eager["total_s"] / compiled["total_s"]
    steady_ratio = sum(times[False][1:]) / sum(times[True][1:])
    saving = eager["median_later_s"] - compiled["median_later_s"]
    break_even = math.ceil(compile_s / saving) if saving > 0 else None
    acc_diff = [abs(a - b) for a, b in zip(accs[False], accs[True])]

    print()
    header = f"{'way':<9} {'trials':>6} {'seconds':>9} {'s/trial':>8} {'first s':>8} {'median later s':>15}"
    print(header)
    print("-" * len(header))
    for way, s in (("eager", eager), ("compiled", compiled)):
        print(
            f"{way:<9} {n:>6} {s['total_s']:>9.1f} {s['s_per_trial']:>8.2f} {s['first_trial_s']:>8.2f} "
            f"{s['median_later_s']:>15.2f}"
        )
    print(f"compile s (first compiled trial - median later): {compile_s:.1f}; graphs compiled: {graphs}")
    print(f"ratio eager/compiled, end to end over {n} trials (compile included): {ratio:.2f}x")
    print(f"steady ratio (first trial of each way left out): {steady_ratio:.2f}x")
    print(
        "break-even: "
        + (f"compiling pays from {break_even} trials" if break_even else "never (compiled trials are not faster)")
    )
    print(
        f"val accuracy, eager vs compiled per trial: mean |diff| {statistics.mean(acc_diff):.4f} (dropout masks differ)"
    )

    out = Path(args.json) if args.json else (QUICK_JSON if args.quick else DEFAULT_JSON)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "bench_compile",
                "quick": args.quick,
                **bench.header(),
                "trials": n,
                "inductor_cache": "warm" if args.warm_cache else "cold",
                "timed": "each trial's fit (training and per-epoch validation); compile included in the first "
                "compiled trial; excludes data, teacher and one untimed eager warm-up epoch",
                "eager": eager,
                "compiled": compiled,
                "compile_s": compile_s,
                "graphs_compiled": graphs,
                "ratio_eager_over_compiled": ratio,
                "steady_ratio": steady_ratio,
                "break_even_trials": break_even,
                "per_trial": [
                    {
                        "trial": i,
                        "method": method,
                        "params": params,
                        "seed": seed,
                        "eager_s": times[False][i],
                        "compiled_s": times[True][i],
                        "eager_val_accuracy": accs[False][i],
                        "compiled_val_accuracy": accs[True][i],
                    }
                    for i, (method, params, seed) in enumerate(plan)
                ],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
