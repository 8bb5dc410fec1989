#!/usr/bin/env python
"""Does the search find the accuracy-vs-cost front cheaply? Four strategies replayed on a table of
(candidate student × method × T × alpha) trained to the end, scored by the hypervolume of the validation front
they find against the epochs they spend.

Two steps, both from the repository root:

1. ``grid``: on the deploy study's data, teacher and five candidate students
   (``studies/fashion_mnist_deploy.toml``), every point of ``GRID`` (kd and lskd, 6 temperatures × 5 alphas, for
   each candidate: 300 students) is trained **to the end** with one seed; its validation accuracy and AUC after
   every epoch, and each candidate's measured cost (``kdsearch.ship.costs``), go to a JSON file (resumable)::

       .venv/bin/python benchmarks/bench_front.py grid --out benchmarks/front/grid.json

2. ``simulate``: searches replayed on that table, each trial sampling ``student``, ``method`` and ordinal indices
   of T and alpha, and "training" by reading its point's per-epoch curve (reported epoch by epoch as
   ``kdsearch.search.objective`` does). Strategies:

   - ``per_candidate``: kdsearch's default (``search.strategy = "per_candidate"``): each trial takes the student
     with the fewest trials so far (``kdsearch.search.samplers.BalancedStudentSampler``), single-objective TPE on
     validation accuracy samples the rest (kdsearch's sampler settings), and the median pruner compares a trial
     only with its own student's (``build_pruner(per_student=True)``, the deploy study's start-up and warm-up);
     the front is then the best trial of each candidate that no cheaper one beats;
   - ``tpe_student``: the same, but TPE samples the student too (kdsearch's first version): it learns that the
     biggest student scores highest and starves the small sizes;
   - ``tpe_student_nopruning``: ``tpe_student`` without pruning (what pruning buys);
   - ``motpe``: multi-objective TPE on (accuracy ↑, cost ↓); Optuna cannot prune multi-objective trials, so
     every trial runs to the end;
   - ``nsga2``: NSGA-II (population 10) on the same two objectives, no pruning;
   - ``random``: random sampling, no pruning.

   Figure of merit: the **hypervolume** of the completed trials' front in (log10 cost, validation accuracy),
   with the reference point (log10 of twice the largest cost, the table's lowest final accuracy), relative to
   the table's own front; against student epochs spent (a pruned trial costs the epochs it ran)::

       .venv/bin/python benchmarks/bench_front.py simulate --grid benchmarks/front/grid.json --out benchmarks/front

   It writes ``table.md``, ``summary.json`` and ``front.html`` (hypervolume ratio vs epochs spent; ``--png``:
   also ``front.png``).

Goal (issue 20): ≥ 95 % of the table's hypervolume with ≤ 50 % of its epochs. What the replay leaves out: a real
search samples T and alpha continuously and each trial has its own seed; here a point always gives one curve.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # use this checkout's kdsearch even without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from kdsearch.search.front import hypervolume  # noqa: E402
from kdsearch.search.samplers import BalancedStudentSampler  # noqa: E402

TEMPERATURES = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # bench_search.py's grid
GRID: dict[str, list[float]] = {  # method → its alpha values (the weight of the hard-label cross-entropy)
    "kd": [0.0, 0.05, 0.2, 0.5, 0.9],
    "lskd": [0.001, 0.006, 0.03, 0.18, 0.9],
}
GRID_SEED = 0
BUDGETS = (20, 40, 60, 100, 150)
HV_TARGET = 0.95
EPOCH_FRACTIONS = (0.1, 0.2, 0.3, 0.5)  # of the table's epochs
STRATEGIES = ("per_candidate", "tpe_student", "tpe_student_nopruning", "motpe", "nsga2", "random")
PRUNER_STARTUP, PRUNER_WARMUP = 2, 1  # studies/fashion_mnist_deploy.toml


def point_key(student: str, method: str, t_index: int, p_index: int) -> str:
    return f"{student}/{method}/{t_index}/{p_index}"


def grid_points(students: list[str]) -> list[tuple[str, str, int, int, dict[str, float]]]:
    """(student, method, T index, alpha index, params) of every grid point."""
    return [
        (s, m, ti, pi, {"temperature": t, "alpha": a})
        for s in students
        for m, alphas in GRID.items()
        for ti, t in enumerate(TEMPERATURES)
        for pi, a in enumerate(alphas)
    ]


# --------------------------------------------------------------------------- grid


def run_grid(args: argparse.Namespace) -> None:
    from grid_table import grid_data, open_table, train_points

    from kdsearch.search.objective import train_student

    spec, prepared, data = grid_data(args.spec, args.set, args.threads)
    students = list(data.students)
    out = Path(args.out)
    table = open_table(
        out,
        {
            "spec": str(args.spec),
            "overrides": args.set,
            "epochs": spec.student.epochs,
            "seed": GRID_SEED,
            "students": students,
            "costs": {n: data.costs.students[n].model_dump() for n in students},
            "teacher_val_accuracy": prepared.teacher.metrics["val_accuracy"],
            "temperatures": TEMPERATURES,
            "grid": GRID,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "device": str(prepared.device),
        },
    )
    todo = [p for p in grid_points(students) if point_key(*p[:4]) not in table["points"]]
    print(f"grid: {len(grid_points(students))} points, {len(todo)} to train ({spec.student.epochs} epochs each)")
    train_points(
        table,
        out,
        [
            (
                point_key(student, method, ti, pi),
                {"student": student, "method": method, "params": params},
                lambda s=student, m=method, p=params: train_student(data.for_student(s), m, p, GRID_SEED)[1],
            )
            for student, method, ti, pi, params in todo
        ],
    )


# --------------------------------------------------------------------------- simulate


def make_search(kind: str, seed: int, epochs: int) -> optuna.Study:
    """A fresh in-memory study for strategy ``kind`` (one of ``STRATEGIES``)."""
    from kdsearch.search.pruners import build_pruner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind in ("per_candidate", "tpe_student", "tpe_student_nopruning"):  # kdsearch's TPE (make_sampler)
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
            pruning = kind != "tpe_student_nopruning"
            pruner = build_pruner(
                "median" if pruning else "none",
                startup_trials=PRUNER_STARTUP,
                warmup_epochs=PRUNER_WARMUP,
                epochs=epochs,
                per_student=True,
            )
            return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        if kind == "motpe":
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
        elif kind == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(population_size=10, seed=seed)
        elif kind == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            raise ValueError(f"unknown strategy {kind!r}; known: {', '.join(STRATEGIES)}")
        return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def replay(kind: str, seed: int, table: dict, n_trials: int, cost: str) -> list[dict]:
    """One search of ``n_trials`` on the table; per trial: its point, its student's cost, final validation
    accuracy (None if pruned) and the epochs it ran."""
    points, meta = table["points"], table["meta"]
    students, epochs = meta["students"], meta["epochs"]
    costs = {s: meta["costs"][s][cost] for s in students}
    study = make_search(kind, seed, epochs)
    multi = len(study.directions) > 1
    log: list[dict] = []

    def run(trial: optuna.Trial):
        student = trial.suggest_categorical("student", students)
        method = trial.suggest_categorical("method", list(GRID))
        ti = trial.suggest_int(f"{method}_t", 0, len(TEMPERATURES) - 1)
        pi = trial.suggest_int(f"{method}_p", 0, len(GRID[method]) - 1)
        curve = points[point_key(student, method, ti, pi)]["accuracy"]
        entry = {"point": point_key(student, method, ti, pi), "cost": costs[student], "value": None, "epochs": 0}
        log.append(entry)
        for epoch, value in enumerate(curve, 1):
            entry["epochs"] = epoch
            if not multi:  # Optuna refuses report() in a multi-objective study
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        entry["value"] = curve[-1]
        return (curve[-1], costs[student]) if multi else curve[-1]

    if kind == "per_candidate":
        study.sampler = BalancedStudentSampler(study.sampler, students)
    study.optimize(run, n_trials=n_trials)
    return log


def reference_point(table: dict, cost: str) -> tuple[float, float]:
    """(log10 of twice the largest candidate cost, the lowest final accuracy in the table)."""
    meta = table["meta"]
    biggest = max(meta["costs"][s][cost] for s in meta["students"])
    return math.log10(2 * biggest), min(p["accuracy"][-1] for p in table["points"].values())


def front_hypervolume(entries: list[dict], reference: tuple[float, float]) -> float:
    """Hypervolume of the completed entries' (log10 cost, final accuracy)."""
    return hypervolume(((math.log10(e["cost"]), e["value"]) for e in entries if e["value"] is not None), reference)


def trace(log: list[dict], reference: tuple[float, float], table_hv: float) -> tuple[list[int], list[float]]:
    """Epochs spent and the hypervolume ratio after each trial of ``log``."""
    xs, ys, spent = [], [], 0
    for n, entry in enumerate(log, 1):
        spent += entry["epochs"]
        xs.append(spent)
        ys.append(front_hypervolume(log[:n], reference) / table_hv)
    return xs, ys


def run_simulate(args: argparse.Namespace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = json.loads(Path(args.grid).read_text())
    meta, points = table["meta"], table["points"]
    missing = [point_key(*p[:4]) for p in grid_points(meta["students"]) if point_key(*p[:4]) not in points]
    if missing:
        sys.exit(f"the grid file lacks {len(missing)} points (e.g. {missing[0]}); run the grid step to the end first")
    epochs = meta["epochs"]
    grid_epochs = len(points) * epochs
    reference = reference_point(table, args.cost)
    everything = [
        {"cost": meta["costs"][p["student"]][args.cost], "value": p["accuracy"][-1], "epochs": epochs}
        for p in points.values()
    ]
    table_hv = front_hypervolume(everything, reference)
    best = {s: max(p["accuracy"][-1] for p in points.values() if p["student"] == s) for s in meta["students"]}
    logs = {
        kind: [replay(kind, seed, table, max(BUDGETS), args.cost) for seed in range(args.seeds)] for kind in STRATEGIES
    }
    traces = {kind: [trace(log, reference, table_hv) for log in runs] for kind, runs in logs.items()}
    half = grid_epochs / 2
    lines = [
        f"Table: {len(meta['students'])} candidates × {sum(len(v) for v in GRID.values()) * len(TEMPERATURES)} "
        f"(method, T, alpha) = {len(points)} points × {epochs} epochs = **{grid_epochs} epochs**, one seed; cost "
        f"`{args.cost}`; best validation accuracy per candidate: "
        + ", ".join(f"{s} {v:.4f} ({meta['costs'][s][args.cost]:.4g})" for s, v in best.items())
        + f". Hypervolume in (log10 {args.cost}, validation accuracy), reference ({reference[0]:.3f}, "
        f"{reference[1]:.4f}); the table's own: {table_hv:.5f}.",
        "",
        f"Hypervolume found / the table's (mean over {args.seeds} sampler seeds, min–max) and epochs spent, by trial "
        f"budget; last columns: epochs until the front first held ≥ {HV_TARGET:.0%} of the table's hypervolume, "
        f"and in how many seeds that took ≤ 50 % of the table's epochs ({half:.0f}).",
        "",
        "| strategy | "
        + " | ".join(f"{b} trials: HV · epochs" for b in BUDGETS)
        + " | epochs to 95 % | ≤ 50 % epochs |",
        "|---|" + "---|" * (len(BUDGETS) + 2),
    ]
    summary: dict[str, dict] = {}
    for kind, runs in traces.items():
        cells, summary[kind] = [], {}
        for b in BUDGETS:
            ratios = [ys[b - 1] for _, ys in runs]
            spent = [xs[b - 1] for xs, _ in runs]
            summary[kind][b] = {"hv": ratios, "epochs": spent}
            cells.append(f"{np.mean(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) · {np.mean(spent):.0f}")
        reached = [next((x for x, y in zip(xs, ys) if y >= HV_TARGET - 1e-12), None) for xs, ys in runs]
        summary[kind]["reached"] = reached
        ok = sum(r is not None and r <= half for r in reached)
        shown = ", ".join("—" if r is None else str(r) for r in reached)
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {shown} | {ok} of {len(reached)} |")
    budgets = [round(grid_epochs * f) for f in EPOCH_FRACTIONS]
    lines += [
        "",
        f"Hypervolume found / the table's within a budget of student epochs (mean over {args.seeds} sampler seeds, "
        "min–max; a trial counts once it has ended within the budget):",
        "",
        "| strategy | " + " | ".join(f"≤ {e} epochs ({f:.0%})" for e, f in zip(budgets, EPOCH_FRACTIONS)) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for kind, runs in traces.items():
        cells = []
        summary[kind]["by_epochs"] = {}
        for e in budgets:
            ratios = [max([y for x, y in zip(xs, ys) if x <= e] or [0.0]) for xs, ys in runs]
            summary[kind]["by_epochs"][e] = ratios
            cells.append(f"{np.mean(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"table_hv": table_hv, "reference": reference, "summary": summary}, indent=1)
    )
    write_figure(traces, grid_epochs, args.cost, out / "front.html", png=args.png)
    print("\n".join(lines))


def write_figure(traces: dict, grid_epochs: int, cost: str, path: Path, *, png: bool = False) -> None:
    """Hypervolume ratio vs epochs spent: per strategy, the mean over sampler seeds (thick) and each seed (thin)."""
    import plotly.graph_objects as go

    def at(xs: list[int], ys: list[float], e: int) -> float:
        return max([y for x, y in zip(xs, ys) if x <= e] or [0.0])

    fig = go.Figure()
    colours = ["#d62728", "#9467bd", "#ff9896", "#1f77b4", "#2ca02c", "#7f7f7f"]
    grid = list(range(0, grid_epochs // 2 + 1, 5))
    for colour, (kind, runs) in zip(colours, traces.items()):
        for xs, ys in runs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": colour, "shape": "hv", "width": 0.7},
                    opacity=0.35,
                    legendgroup=kind,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        mean = [float(np.mean([at(xs, ys, e) for xs, ys in runs])) for e in grid]
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=mean,
                mode="lines",
                line={"color": colour, "shape": "hv", "width": 3},
                name=f"{kind} (mean of {len(runs)})",
                legendgroup=kind,
            )
        )
    fig.add_hline(y=HV_TARGET, line={"dash": "dot", "color": "grey"}, annotation_text=f"{HV_TARGET:.0%} of the table's")
    fig.update_layout(
        title=f"Front found vs epochs spent (hypervolume / the table's; log10 {cost} × validation accuracy)",
        xaxis={"title": "student epochs spent", "range": [0, grid_epochs / 2]},
        yaxis={"title": "hypervolume / table's", "range": [0.8, 1.005]},
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs="cdn")
    if png:
        write_png(fig, path.with_suffix(".png"))


def write_png(fig, path: Path) -> None:
    """``fig`` as a PNG, rendered offline by headless Chromium through Playwright (both in the test set-up)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "figure.html"
        fig.write_html(page_file, include_plotlyjs=True, default_width=1100, default_height=560)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1140, "height": 600})
            page.goto(page_file.as_uri())
            page.wait_for_selector("div.js-plotly-plot")
            page.locator("div.js-plotly-plot").first.screenshot(path=str(path))
            browser.close()
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    g = sub.add_parser("grid", help="train every grid point to the end (resumable)")
    g.add_argument("--spec", default="studies/fashion_mnist_deploy.toml")
    g.add_argument("--set", action="append", default=[], help="spec override, as kdsearch run --set")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--out", default="benchmarks/front/grid.json")
    s = sub.add_parser("simulate", help="replay the strategies on the grid table")
    s.add_argument("--grid", default="benchmarks/front/grid.json")
    s.add_argument("--cost", default="params", choices=["params", "flops", "size_mb", "latency_ms", "onnx_latency_ms"])
    s.add_argument("--out", default="benchmarks/front")
    s.add_argument("--seeds", type=int, default=5, help="sampler seeds per strategy (default 5)")
    s.add_argument("--png", action="store_true", help="also front.png (headless Chromium via Playwright)")
    args = parser.parse_args()
    run_grid(args) if args.step == "grid" else run_simulate(args)


if __name__ == "__main__":
    main()
