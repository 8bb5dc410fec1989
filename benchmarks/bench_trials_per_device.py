#!/usr/bin/env python
"""Trials/hour of the default study with K trials trained at once (stacked) vs one at a time.

The default study's data, teacher (cached logits), student (LightNN), batch size, learning rate and
steps per epoch; pruning off, so every trial runs all of ``student.epochs``. For each K the
measurement trains K fresh students (kd, distinct T and alpha, each its own seed) for
``--epochs`` epoch(s) and times it, validation after each epoch included:

* K = 1 ``alone``: ``kdsearch.distill.train.fit`` (the one-at-a-time path every trial takes today);
* K ≥ 1 ``stacked``: ``kdsearch.distill.stacked.StudentStack`` with K members (``vmap`` over
  ``functional_call``, one Adam over the stacked parameters).

trials/hour = K / (seconds per epoch × student.epochs) × 3600; the ratio is against ``alone``.
Not timed: data, teacher, building the students. Optuna's bookkeeping (ms per trial) is left out
of both sides. The first epoch of each K is a warm-up (kernels chosen, memory allocated) and not
counted; ``--repeats`` timed epochs follow and their median is used.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_trials_per_device.py                    # K = 1 .. 32 on this machine
    .venv/bin/python benchmarks/bench_trials_per_device.py --quick            # tiny data, K = 1, 2, 4 (~1 min)
    .venv/bin/python benchmarks/bench_trials_per_device.py --device cuda --ks 1 2 4 8 16 32 64 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import REPO, prepare_bench

from kdsearch.distill.train import fit, sync
from kdsearch.errors import out_of_memory
from kdsearch.parallel.stacked_trials import add_fresh, empty_stack
from kdsearch.search.objective import fresh_student, plan_trial

QUICK = ["data.train_limit=3000", "data.labeled=500", "data.unlabeled=1500", "data.val_size=500", "teacher.epochs=1"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(REPO / "studies" / "fashion_mnist.toml"))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per K (after one warm-up epoch)")
    p.add_argument("--quick", action="store_true", help="tiny data and K = 1, 2, 4: a smoke run")
    p.add_argument("--set", action="append", default=[], help="spec override, as kdsearch --set")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "trials_per_device" / "result.json"))
    return p.parse_args(argv)


def params_for(i: int) -> dict[str, float]:
    """Distinct kd parameters per member (the values do not change the cost)."""
    return {"temperature": 1.0 + 0.5 * i, "alpha": (i % 10) / 10}


def time_alone(data, epochs: int) -> float:
    """Median seconds per epoch of one student trained by ``fit`` (after a warm-up epoch)."""
    times: list[float] = []
    for e in range(epochs + 1):
        torch.manual_seed(e)
        model = fresh_student(data).to(data.device)
        sync(data.device)
        start = time.perf_counter()
        fit(model, replace(plan_trial(data, "kd", params_for(e), e), epochs=1), data.val)
        sync(data.device)
        if e:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_stacked(data, k: int, epochs: int) -> float:
    """Median seconds per epoch of a K-member stack (after a warm-up epoch)."""
    stack = empty_stack(data)
    for i in range(k):
        add_fresh(stack, data, i, plan_trial(data, "kd", params_for(i), i))
    times: list[float] = []
    for e in range(epochs + 1):
        sync(data.device)
        start = time.perf_counter()
        stack.run_epoch()
        sync(data.device)
        if e:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = [*(QUICK if args.quick else []), *args.set, f'runtime.device="{args.device}"']
    bench = prepare_bench(args.spec, overrides, args.threads)
    spec, data, device, name, threads = bench.spec, bench.data, bench.device, bench.device_name, bench.threads
    ks = [1, 2, 4] if args.quick else args.ks
    epochs = spec.student.epochs
    print(
        f"device {device} ({name}), {threads} threads, torch {torch.__version__}; student {spec.student.arch}, "
        f"batch {spec.student.batch_size}, {data.steps} steps/epoch, {epochs} epochs/trial, pool {len(data.distill_set)}"
    )
    alone = time_alone(data, args.epochs)
    per_hour_alone = 3600 / (alone * epochs)
    rows = [{"k": 1, "path": "alone (fit)", "s_per_epoch": alone, "trials_per_hour": per_hour_alone, "ratio": 1.0}]
    print(f"alone     K=1   {alone:8.3f} s/epoch  {per_hour_alone:9.1f} trials/h  1.00x")
    for k in ks:
        try:
            seconds = time_stacked(data, k, args.epochs)
        except RuntimeError as err:
            if not out_of_memory(err):
                raise
            print(f"stacked   K={k:<4d} out of memory")
            break
        per_hour = 3600 * k / (seconds * epochs)
        ratio = per_hour / per_hour_alone
        rows.append({"k": k, "path": "stacked", "s_per_epoch": seconds, "trials_per_hour": per_hour, "ratio": ratio})
        print(f"stacked   K={k:<4d}{seconds:8.3f} s/epoch  {per_hour:9.1f} trials/h  {ratio:.2f}x")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                **bench.header(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
