"""Soak test of kdsearch's storages: N trials in flight (W worker processes x K trial threads, like
``kdsearch worker -k K`` on W GPUs), the real worker loop, with the training replaced by a sleep.

    python benchmarks/soak.py --storage grpc --in-flight 128 --workers 8 --trials 400
    python benchmarks/soak.py --storage postgresql --in-flight 32 --faults kill-workers,restart-postgres

Each worker is the command line of a recipe in ``deploy/`` (``--recipe slurm`` or ``k8s``), run as it is
with the recipe's environment, so the recipes cannot rot; only ``KDSEARCH_SIMULATE_EPOCH_S`` (the sleep,
``kdsearch/parallel/simulate.py``) and ``KDSEARCH_SOAK_STATS`` (per-call latencies) are added. Storages:
``sqlite``, ``journal`` (files here), ``postgresql`` (a private server on loopback, ``max_connections`` 100
like PostgreSQL's default), ``grpc`` (``kdsearch storage-proxy`` in front of that server). Faults:
``kill-workers`` (SIGKILL a random worker now and then, and start it again, as a scheduler requeues it),
``kill-proxy`` (SIGKILL the proxy mid-run, start it again 3 s later), ``restart-postgres`` (an immediate stop
and start of the database). Bounded: ``--time-limit`` s, then every process is killed and the run fails.

Checked at the end, and the run fails otherwise: exactly ``--trials`` finished trials, each with all its
intermediate values (a pruned one: every epoch up to its last), no failed trial's retry finished twice, none
RUNNING or WAITING, every worker exit 0.
Writes ``--out`` (JSON) and prints one Markdown row of the table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
from local_servers import private_postgres, storage_proxy  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
SPEC = """\
name = "soak"
output_dir = "{out}"
[data]
root = "{root}"
train_limit = 1200
test_limit = 200
val_size = 200
labeled = 200
unlabeled = 400
[teacher]
epochs = 1
[student]
epochs = {epochs}
[search]
trials = {trials}
methods = ["kd", "lskd", "dkd"]
pruner = "median"
pruner_startup_trials = 5
pruner_warmup_epochs = 1
[runtime]
cache_dir = "{cache}"
threads = 1
heartbeat_interval = {beat}
grace_period = {grace}
"""
ROW = (
    "| {storage} | {in_flight} ({workers}x{k}) | {faults} | {trials} | {finished} | {max_running} | {rate:.1f} | "
    "{ask_p50:.0f} / {ask_p99:.0f} | {tell_p50:.0f} / {tell_p99:.0f} | {report_p50:.0f} / {report_p99:.0f} | "
    "{errors} | {connections} | {lost} | {wall_s:.0f} |"
)


def recipe_command(recipe: str, env: dict[str, str]) -> list[str]:
    """The worker command line of ``deploy/<recipe>``, its variables filled from ``env``; ``kdsearch`` becomes
    this Python's ``-m kdsearch``."""
    if recipe == "slurm":
        text = (REPO / "deploy" / "slurm" / "kdsearch-workers.sbatch").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("exec kdsearch worker"))
        for name in re.findall(r"\$\{?(\w+)", line):
            if name not in env:
                raise KeyError(f"the SLURM recipe uses ${name}, which the harness does not set")
        words = [re.sub(r"\$\{?(\w+)\}?", lambda m: env[m[1]], w) for w in shlex.split(line)[1:]]
    elif recipe == "k8s":
        import yaml

        doc = yaml.safe_load((REPO / "deploy" / "k8s" / "kdsearch-workers.yaml").read_text())
        container = doc["spec"]["template"]["spec"]["containers"][0]
        values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        values.update({k: v for k, v in env.items() if k in values or k == "JOB_COMPLETION_INDEX"})
        words = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], w) for w in container["command"]]
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    assert words[:2] == ["kdsearch", "worker"], words
    return [sys.executable, "-m", "kdsearch", *words[1:]]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Watcher(threading.Thread):
    """Every second: trials in flight (RUNNING: in SQL on PostgreSQL, else from a storage client of its own) and
    database connections (``pg_stat_activity``, the watcher's own psql excluded)."""

    def __init__(self, url: str, postgres) -> None:
        super().__init__(daemon=True)
        self.url, self.postgres = url, postgres
        self.running: list[int] = []
        self.connections: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        from kdsearch.search.storage import open_storage

        storage = None
        while not self.done.wait(1.0):
            if self.postgres is not None:  # a count in SQL: reading the whole study every second would load it
                running = self.postgres.scalar("SELECT count(*) FROM trials WHERE state = 'RUNNING'")
                if running >= 0:
                    self.running.append(running)
                self.connections.append(self.postgres.connections())
                continue
            try:
                storage = storage or open_storage(self.url)
                study = optuna.load_study(study_name="soak", storage=storage)
                running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                self.running.append(len(running))
            except Exception:  # not created yet, or the storage is restarting
                pass


def check_study(url: str, total: int, epochs: int) -> dict:
    """What the storage holds at the end: counts by state, and the trials that lost something."""
    from kdsearch.search.storage import open_storage

    storage = open_storage(url)
    study = optuna.load_study(study_name="soak", storage=storage)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    lost = []
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE and sorted(t.intermediate_values) != list(range(1, epochs + 1)):
            lost.append(t.number)
        if t.state == optuna.trial.TrialState.PRUNED:
            steps = sorted(t.intermediate_values)
            if not steps or steps != list(range(1, steps[-1] + 1)):
                lost.append(t.number)
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    retries: dict[tuple, list[int]] = {}  # a FAILed trial's retry (Optuna's retry_history), by what it retries
    for t in finished:
        if "retry_history" in t.system_attrs:
            retries.setdefault(tuple(t.system_attrs["retry_history"]), []).append(t.number)
    twice = sorted(n for numbers in retries.values() if len(numbers) > 1 for n in numbers)
    starts = [t.datetime_start for t in finished if t.datetime_start]
    ends = [t.datetime_complete for t in finished if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return {
        "states": states,
        "finished": len(finished),
        "lost": lost,
        "retried_twice": twice,
        "exact": len(finished) == total
        and not lost
        and not twice
        and not states.get("RUNNING")
        and not states.get("WAITING"),
        "span_s": span,
        "rate": len(finished) / span if span and span > 0 else float("nan"),
    }


def soak(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kdsearch-soak-"))
    k = max(1, math.ceil(args.in_flight / args.workers))
    faults = [f for f in args.faults.split(",") if f]
    for f in faults:
        if f not in ("kill-workers", "kill-proxy", "restart-postgres"):
            raise SystemExit(f"unknown fault {f!r}: kill-workers, kill-proxy, restart-postgres")
    if "kill-proxy" in faults and args.storage != "grpc":
        raise SystemExit("--faults kill-proxy needs --storage grpc")
    if "restart-postgres" in faults and args.storage not in ("postgresql", "grpc"):
        raise SystemExit("--faults restart-postgres needs --storage postgresql or grpc")
    # kdsearch's defaults (a heartbeat every 10 s, FAILED after 30 s of silence); killed workers' trials come back
    # sooner with a short grace period, which costs a beat write per running trial every 2 s
    beat, grace = (2, 12) if "kill-workers" in faults else (10, 30)
    spec = work / "soak.toml"
    spec.write_text(
        SPEC.format(
            out=work / "run",
            root=args.data_root,
            epochs=args.epochs,
            trials=args.trials,
            cache=args.cache,
            beat=beat,
            grace=grace,
        )
    )
    stats_dir = work / "stats"
    result: dict = {
        "storage": args.storage,
        "in_flight": k * args.workers,
        "workers": args.workers,
        "k": k,
        "trials": args.trials,
        "epochs": args.epochs,
        "epoch_s": args.epoch_s,
        "faults": faults,
        "recipe": args.recipe,
    }
    with ExitStack() as stack:
        postgres = proxy = None
        if args.storage == "sqlite":
            url = f"sqlite:///{work / 'study.db'}"
        elif args.storage == "journal":
            url = f"journal:///{work / 'journal.log'}"
        else:
            postgres = stack.enter_context(private_postgres(max_connections=100))
            url = postgres.url
            if args.storage == "grpc":
                proxy = stack.enter_context(storage_proxy(postgres.url, work / "proxy.log", threads=args.proxy_threads))
                url = proxy.url
        watcher = Watcher(postgres.url if postgres is not None else url, postgres)
        env = {
            **os.environ,
            "KDSEARCH_STORAGE": url,
            "KDSEARCH_SPEC": str(spec),
            "KDSEARCH_TRIALS": str(args.trials),
            "KDSEARCH_K": str(k),
            "KDSEARCH_MAX_TRIALS": "1000000",
            "KDSEARCH_SIMULATE_EPOCH_S": args.epoch_s,
            "KDSEARCH_SOAK_STATS": str(stats_dir),
            "PYTHONUNBUFFERED": "1",
        }
        logs = work / "logs"
        logs.mkdir()
        procs: dict[int, subprocess.Popen] = {}
        kills = {"workers": 0, "proxy": 0, "postgres": 0}

        def start(rank: int) -> None:
            rank_env = {**env, "SLURM_ARRAY_TASK_ID": str(rank), "JOB_COMPLETION_INDEX": str(rank)}
            cmd = recipe_command(args.recipe, rank_env)
            with open(logs / f"worker-{rank}.log", "a") as out:
                procs[rank] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=rank_env, cwd=work)

        # the first worker creates the study and the teacher; the others join once it exists (as a job array would
        # if its first task started first; they would wait for the teacher's lock otherwise)
        t0 = time.monotonic()
        deadline = t0 + args.time_limit
        start(0)
        while time.monotonic() < deadline and procs[0].poll() is None:
            if "simulated training" in (logs / "worker-0.log").read_text(errors="replace"):
                break
            time.sleep(0.5)
        for rank in range(1, args.workers):
            start(rank)
        result["start_s"] = time.monotonic() - t0
        watcher.start()
        rng = random.Random(0)
        next_fault = time.monotonic() + 10
        proxy_down_until = None
        while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
            now = time.monotonic()
            if proxy is not None and proxy_down_until is not None and now >= proxy_down_until:
                proxy.start()
                proxy_down_until = None
            if now < next_fault or not faults:
                continue
            fault = rng.choice(faults)
            if fault == "kill-workers":
                alive = [r for r, p in procs.items() if p.poll() is None]
                if alive:
                    rank = rng.choice(alive)
                    procs[rank].send_signal(signal.SIGKILL)
                    procs[rank].wait()
                    kills["workers"] += 1
                    start(rank)
            elif fault == "kill-proxy" and proxy_down_until is None and kills["proxy"] < 2:
                proxy.kill()
                kills["proxy"] += 1
                proxy_down_until = now + 3
            elif fault == "restart-postgres" and kills["postgres"] < 2:
                postgres.restart()
                kills["postgres"] += 1
            next_fault = now + rng.uniform(8, 15)
        timed_out = any(p.poll() is None for p in procs.values())
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)  # each thread's stack into the worker's log: where it was stuck
        time.sleep(1 if timed_out else 0)
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if proxy is not None and proxy.proc is not None and proxy.proc.poll() is not None:
            proxy.start()  # killed last: the check below reads through it
        watcher.done.set()
        watcher.join()
        result["wall_s"] = time.monotonic() - t0
        result["timed_out"] = timed_out
        result["exit_codes"] = sorted({p.returncode for p in procs.values()})
        result["kills"] = kills
        result.update(check_study(url, args.trials, args.epochs))
        result["max_running"] = max(watcher.running, default=0)
        result["mean_running"] = statistics.fmean(watcher.running) if watcher.running else 0.0
        result["max_connections"] = max(watcher.connections, default=None) if postgres is not None else None
        times: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        for file in stats_dir.glob("*.json"):
            data = json.loads(file.read_text())
            for name, values in data["times"].items():
                times.setdefault(name, []).extend(values)
            for name, n in data["errors"].items():
                errors[name] = errors.get(name, 0) + n
        result["latency_ms"] = {
            name: {"p50": 1000 * percentile(v, 0.5), "p99": 1000 * percentile(v, 0.99), "calls": len(v)}
            for name, v in times.items()
        }
        result["storage_errors"] = errors
        # the serial trial slot's share of the wall time: near 1, trial starts queue on it (it bounds the start rate)
        result["slot_busy"] = sum(times.get("slot_hold", [])) / result["wall_s"] if result["wall_s"] else 0.0
        tracebacks = sum((logs / f).read_text(errors="replace").count("Traceback") for f in os.listdir(logs))
        result["tracebacks"] = tracebacks
        result["ok"] = bool(result["exact"] and not timed_out and result["exit_codes"] == [0] and not tracebacks)
        result["logs"] = str(work)
    return result


def row(r: dict) -> str:
    lat = r["latency_ms"]

    def ms(name: str, q: str) -> float:
        return lat.get(name, {}).get(q, float("nan"))

    errors = sum(r["storage_errors"].values()) + r["tracebacks"]
    return ROW.format(
        storage=r["storage"],
        in_flight=r["in_flight"],
        workers=r["workers"],
        k=r["k"],
        faults=",".join(r["faults"]) or "-",
        trials=r["trials"],
        finished=r["finished"],
        max_running=r["max_running"],
        rate=r["rate"],
        ask_p50=ms("ask", "p50"),
        ask_p99=ms("ask", "p99"),
        tell_p50=ms("tell", "p50"),
        tell_p99=ms("tell", "p99"),
        report_p50=ms("report", "p50"),
        report_p99=ms("report", "p99"),
        errors=errors,
        connections="-" if r["max_connections"] is None else r["max_connections"],
        lost="none" if r["ok"] else f"FAILED ({'; '.join(why(r))})",
        wall_s=r["wall_s"],
    )


def why(r: dict) -> list[str]:
    out = []
    if r["timed_out"]:
        out.append("time limit")
    if r["finished"] != r["trials"]:
        out.append(f"{r['finished']} finished")
    if r["lost"]:
        out.append(f"{len(r['lost'])} trials lost values")
    if r.get("retried_twice"):
        out.append(f"one retry finished twice: trials {r['retried_twice']}")
    for state in ("RUNNING", "WAITING"):
        if r["states"].get(state):
            out.append(f"{r['states'][state]} {state}")
    if r["exit_codes"] != [0]:
        out.append(f"exit codes {r['exit_codes']}")
    if r["tracebacks"]:
        out.append(f"{r['tracebacks']} tracebacks")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=["sqlite", "journal", "postgresql", "grpc"], required=True)
    parser.add_argument("--in-flight", type=int, default=32, help="trials in flight: workers x K")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--trials", type=int, default=100, help="finished trials the study must end with")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch-s", default="0.2-1.0", help="seconds per simulated epoch: 0.5, or low-high")
    parser.add_argument("--faults", default="", help="comma-separated: kill-workers, kill-proxy, restart-postgres")
    parser.add_argument(
        "--recipe", choices=["slurm", "k8s"], default="slurm", help="the deploy/ recipe whose worker runs"
    )
    parser.add_argument("--proxy-threads", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds, then everything is killed")
    parser.add_argument("--data-root", default=str(FASHION))
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "kdsearch-soak"), help="teacher cache")
    parser.add_argument("--out", type=Path, help="JSON result (default: benchmarks/soak/<storage>-<N>.json)")
    args = parser.parse_args()
    result = soak(args)
    out = (
        args.out
        or REPO / "benchmarks" / "soak" / f"{args.storage}-{result['in_flight']}{'-faults' if args.faults else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(row(result))
    if "slot_hold" in result["latency_ms"]:
        hold, wait = result["latency_ms"]["slot_hold"], result["latency_ms"].get("slot_wait", {})
        print(
            f"trial slot: held {100 * result['slot_busy']:.0f}% of the wall time; hold p50/p99 {hold['p50']:.0f} / "
            f"{hold['p99']:.0f} ms over {hold['calls']} holds; wait p50/p99 {wait.get('p50', float('nan')):.0f} / "
            f"{wait.get('p99', float('nan')):.0f} ms"
        )
    print(f"soak: {'ok' if result['ok'] else 'FAILED'}; {out}; logs in {result['logs']}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
