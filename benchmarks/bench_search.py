#!/usr/bin/env python
"""Search quality: how close do random search, TPE and TPE with a pruner get to the grid's best,
for how many student epochs? And which pruner finds the best value per epoch spent?

Two steps, both from the repository root:

1. ``grid``: on the default study's data, teacher and student (``studies/fashion_mnist.toml``),
   every point of a grid over the logit methods (``GRID``: 6 temperatures × 5 values of a second
   parameter for each of kd, lskd and dkd, 90 students) is trained **to the end** with one seed,
   and its validation accuracy and AUC after every epoch are written to a JSON file (resumable:
   points already in the file are skipped)::

       .venv/bin/python benchmarks/bench_search.py grid --out benchmarks/search/grid.json

2. ``simulate``: searches replayed on that table (a tabular benchmark, as NAS-Bench/HPOBench do):
   each search samples the grid's indices (``method``, then ordinal integers for T and the second
   parameter, so TPE sees their order), and a trial "trains" by reading its point's per-epoch
   curve, reported epoch by epoch to the pruner exactly as ``kdsearch.search.objective`` reports it. Epochs
   spent = epochs a trial ran before it ended or was pruned. Searches: random, TPE (kdsearch's
   sampler settings) with no pruning, and TPE with each pruner of ``kdsearch.search.pruners``; 3 sampler
   seeds each, budgets of 10/20/30/50 trials::

       .venv/bin/python benchmarks/bench_search.py simulate --grid benchmarks/search/grid.json \\
           --out benchmarks/search

   It writes ``table.md`` (best validation value found and epochs spent per search and budget,
   and the epochs each search needed to come within 0.1 pp of the grid's best) and
   ``search.html`` (plotly: best value found vs epochs spent).

What the replay leaves out: a real search samples T and alpha continuously, and each trial has
its own seed; here a point always gives the same curve. The replay measures the search
strategies on equal terms, not the noise of one training run (see RESULTS.md §7).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # use this checkout's kdsearch even without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

TEMPERATURES = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
# method → (its second searched parameter, its grid values, fixed params)
GRID: dict[str, tuple[str, list[float], dict[str, float]]] = {
    "kd": ("alpha", [0.0, 0.05, 0.2, 0.5, 0.9], {}),
    "lskd": ("alpha", [0.001, 0.006, 0.03, 0.18, 0.9], {}),
    "dkd": ("beta", [0.5, 1.2, 2.8, 6.7, 16.0], {"alpha_tckd": 1.0, "warmup_epochs": 1.0}),
}
GRID_SEED = 0
BUDGETS = (10, 20, 30, 50)
EPOCH_BUDGETS = (50, 100, 150, 200, 250)
SAMPLER_SEEDS = 3
CLOSE_PP = 0.1  # "within 0.1 pp of the grid's best"


def point_key(method: str, t_index: int, p_index: int) -> str:
    return f"{method}/{t_index}/{p_index}"


def grid_points() -> list[tuple[str, int, int, dict[str, float]]]:
    """(method, T index, second-parameter index, params) of every grid point."""
    points = []
    for method, (param, values, fixed) in GRID.items():
        for ti, t in enumerate(TEMPERATURES):
            for pi, v in enumerate(values):
                points.append((method, ti, pi, {"temperature": t, param: v, **fixed}))
    return points


# --------------------------------------------------------------------------- grid


def run_grid(args: argparse.Namespace) -> None:
    from grid_table import grid_data, open_table, train_points

    from kdsearch.search.objective import train_student

    spec, prepared, data = grid_data(args.spec, args.set, args.threads)
    out = Path(args.out)
    table = open_table(
        out,
        {
            "spec": str(args.spec),
            "overrides": args.set,
            "epochs": spec.student.epochs,
            "objective": spec.search.objective,
            "seed": GRID_SEED,
            "teacher_val_accuracy": prepared.teacher.metrics["val_accuracy"],
            "temperatures": TEMPERATURES,
            "grid": {m: {"param": p, "values": v, "fixed": f} for m, (p, v, f) in GRID.items()},
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "device": str(prepared.device),
        },
    )
    todo = [p for p in grid_points() if point_key(*p[:3]) not in table["points"]]
    print(f"grid: {len(grid_points())} points, {len(todo)} to train ({spec.student.epochs} epochs each)", flush=True)
    train_points(
        table,
        out,
        [
            (
                point_key(method, ti, pi),
                {"method": method, "params": params},
                lambda m=method, p=params: train_student(data, m, p, GRID_SEED)[1],
            )
            for method, ti, pi, params in todo
        ],
    )


# --------------------------------------------------------------------------- simulate


def make_search(kind: str, seed: int, epochs: int) -> optuna.Study:
    """A fresh in-memory study with the sampler and pruner of ``kind`` (``random``, ``tpe`` or ``tpe+<pruner>``)."""
    import warnings

    from kdsearch.search.pruners import build_pruner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "random":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
        else:  # kdsearch's sampler settings (study.make_sampler)
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    pruner_name, _, warmup = kind.partition("+")[2].partition("@")
    pruner = build_pruner(pruner_name or "none", startup_trials=5, warmup_epochs=int(warmup or 0), epochs=epochs)
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def replay(kind: str, seed: int, table: dict, n_trials: int, objective: str) -> list[dict]:
    """Run one search of ``n_trials`` on the table; per trial: its point, final value (None if pruned), epochs run."""
    points = table["points"]
    epochs = table["meta"]["epochs"]
    study = make_search(kind, seed, epochs)
    log: list[dict] = []
    methods = list(GRID)

    def run(trial: optuna.Trial) -> float:
        method = trial.suggest_categorical("method", methods)
        ti = trial.suggest_int(f"{method}_t", 0, len(TEMPERATURES) - 1)
        pi = trial.suggest_int(f"{method}_p", 0, len(GRID[method][1]) - 1)
        curve = points[point_key(method, ti, pi)][objective]
        entry = {"point": point_key(method, ti, pi), "value": None, "epochs": 0}
        log.append(entry)
        for epoch, value in enumerate(curve, 1):
            entry["epochs"] = epoch
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        entry["value"] = curve[-1]
        return curve[-1]

    study.optimize(run, n_trials=n_trials)
    return log


def best_within_epochs(log: list[dict], epochs: int) -> float:
    """Best final value among the trials that ended before the search had spent more than ``epochs`` epochs."""
    best, spent = -math.inf, 0
    for entry in log:
        spent += entry["epochs"]
        if spent > epochs:
            break
        if entry["value"] is not None:
            best = max(best, entry["value"])
    return best


def summarize(log: list[dict], budget: int, target: float) -> dict:
    """Best final value among the first ``budget`` trials, epochs they spent, and epochs to reach ``target``."""
    best, spent, reached = -math.inf, 0, None
    for n, entry in enumerate(log, 1):
        spent += entry["epochs"]
        if entry["value"] is not None:
            best = max(best, entry["value"])
        if reached is None and best >= target - 1e-12:
            reached = spent
        if n == budget:
            break
    return {"best": best, "epochs": spent, "reached": reached}


SEARCHES = (
    "random",
    "tpe",
    "tpe+median@0",
    "tpe+median@1",
    "tpe+median@2",
    "tpe+median_per_method@0",
    "tpe+median_per_method@1",
    "tpe+successive_halving",
    "tpe+hyperband",
)


def run_simulate(args: argparse.Namespace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = json.loads(Path(args.grid).read_text())
    objective = args.objective or table["meta"]["objective"]
    points = table["points"]
    missing = [point_key(*p[:3]) for p in grid_points() if point_key(*p[:3]) not in points]
    if missing:
        sys.exit(f"the grid file lacks {len(missing)} points (e.g. {missing[0]}); run the grid step to the end first")
    epochs = table["meta"]["epochs"]
    finals = {k: v[objective][-1] for k, v in points.items()}
    grid_best_key = max(finals, key=finals.get)
    grid_best = finals[grid_best_key]
    grid_epochs = len(points) * epochs
    target = grid_best - CLOSE_PP / 100
    per_method_best = {m: max(v for k, v in finals.items() if k.startswith(m + "/")) for m in GRID}
    results: dict[str, list[list[dict]]] = {}
    for kind in SEARCHES:
        results[kind] = []
        for seed in range(args.seeds):
            log = replay(kind, seed, table, max(BUDGETS), objective)
            results[kind].append(log)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Grid: {len(points)} points × {epochs} epochs = **{grid_epochs} epochs**; best validation {objective} "
        f"**{grid_best:.4f}** ({grid_best_key}: {points[grid_best_key]['params']}); best per method: "
        + ", ".join(f"{m} {v:.4f}" for m, v in per_method_best.items())
        + f". Target: within {CLOSE_PP} pp of the grid's best (≥ {target:.4f}).",
        "",
        f"Best validation value found (mean over {args.seeds} sampler seeds, min–max) and epochs spent, by trial budget; "
        f"last column: epochs until the search first held a trial ≥ {target:.4f} within 50 trials "
        "(per seed; — = never).",
        "",
        "| search | " + " | ".join(f"{b} trials: best · epochs" for b in BUDGETS) + " | epochs to target |",
        "|---|" + "---|" * (len(BUDGETS) + 1),
    ]
    summary: dict[str, dict] = {}
    for kind, logs in results.items():
        cells = []
        summary[kind] = {}
        for b in BUDGETS:
            s = [summarize(log, b, target) for log in logs]
            best = [x["best"] for x in s]
            spent = [x["epochs"] for x in s]
            summary[kind][b] = {"best": best, "epochs": spent}
            cells.append(f"{np.mean(best):.4f} ({min(best):.4f}–{max(best):.4f}) · {np.mean(spent):.0f}")
        reached = [summarize(log, max(BUDGETS), target)["reached"] for log in logs]
        summary[kind]["reached"] = reached
        shown = ", ".join("—" if r is None else str(r) for r in reached)
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {shown} |")
    lines += [
        "",
        f"Best validation value found within a budget of student epochs (mean over {args.seeds} sampler seeds; "
        "a pruned trial costs the epochs it ran):",
        "",
        "| search | " + " | ".join(f"≤ {e} epochs" for e in EPOCH_BUDGETS) + " |",
        "|---|" + "---|" * len(EPOCH_BUDGETS),
    ]
    for kind, logs in results.items():
        cells = [f"{np.mean([best_within_epochs(log, e) for log in logs]):.4f}" for e in EPOCH_BUDGETS]
        summary[kind]["by_epochs"] = {e: [best_within_epochs(log, e) for log in logs] for e in EPOCH_BUDGETS}
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    half = grid_epochs / 2
    lines += [
        "",
        f"Claim checked: *TPE with pruning reaches within {CLOSE_PP} pp of the grid's best in at most half the "
        f"grid's epochs ({half:.0f})*:",
    ]
    for kind in SEARCHES:
        if "+" not in kind:
            continue
        reached = summary[kind]["reached"]
        ok = sum(r is not None and r <= half for r in reached)
        lines.append(f"- {kind}: {ok} of {len(reached)} seeds")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"grid_best": grid_best, "grid_epochs": grid_epochs, "summary": summary, "logs": results}, indent=1)
    )
    write_figure(results, grid_best, grid_epochs, objective, out / "search.html")
    print("\n".join(lines))


def write_figure(results: dict, grid_best: float, grid_epochs: int, objective: str, path: Path) -> None:
    """Best value found vs epochs spent, one line per search and sampler seed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colours = ["#7f7f7f", "#1f77b4", "#2ca02c", "#98df8a", "#bcbd22", "#d62728", "#ff9896", "#9467bd", "#8c564b"]
    for colour, (kind, logs) in zip(colours, results.items()):
        for i, log in enumerate(logs):
            xs, ys, best, spent = [], [], -math.inf, 0
            for entry in log:
                spent += entry["epochs"]
                if entry["value"] is not None:
                    best = max(best, entry["value"])
                if best > -math.inf:
                    xs.append(spent)
                    ys.append(best)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": colour, "shape": "hv"},
                    name=kind,
                    legendgroup=kind,
                    showlegend=i == 0,
                )
            )
    fig.add_hline(
        y=grid_best, line={"dash": "dash", "color": "black"}, annotation_text=f"grid best ({grid_epochs} epochs)"
    )
    fig.add_hline(
        y=grid_best - CLOSE_PP / 100, line={"dash": "dot", "color": "grey"}, annotation_text=f"−{CLOSE_PP} pp"
    )
    fig.update_layout(
        title=f"Best validation {objective} found vs student epochs spent ({len(logs)} sampler seeds each)",
        xaxis_title="student epochs spent",
        yaxis_title=f"best validation {objective}",
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs="cdn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    g = sub.add_parser("grid", help="train every grid point to the end (resumable)")
    g.add_argument("--spec", default="studies/fashion_mnist.toml")
    g.add_argument("--set", action="append", default=[], help="spec override, as kdsearch run --set")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--out", default="benchmarks/search/grid.json")
    s = sub.add_parser("simulate", help="replay random / TPE / TPE + pruners on the grid table")
    s.add_argument("--grid", default="benchmarks/search/grid.json")
    s.add_argument("--objective", choices=["accuracy", "auc"], default=None)
    s.add_argument("--out", default="benchmarks/search")
    s.add_argument("--seeds", type=int, default=SAMPLER_SEEDS, help="sampler seeds per search (default 3)")
    args = parser.parse_args()
    run_grid(args) if args.step == "grid" else run_simulate(args)


if __name__ == "__main__":
    main()
