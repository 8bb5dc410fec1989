"""``kdsearch run --workers N``: which device and threads each local worker process gets (``worker_plan``),
its ``kdsearch worker`` command line and environment, starting the processes, one progress bar while they
run, stopping them on Ctrl-C and reporting the failed ones (``run_worker_processes``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import optuna

from ..config.spec import StudySpec
from ..errors import KdsearchError
from ..search.storage import STORAGE_ENV, shown_url
from ..search.study import finished_count
from ..signals import StopSignals, StudyInterrupted


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_count(workers: int, device) -> int:
    """``--workers``: as given; 0 means one per visible GPU (1 on a CPU-only machine)."""
    if workers:
        return workers
    return max(1, len(visible_gpus())) if device.type == "cuda" else 1


def worker_plan(spec, device, workers: int, threads: Optional[int] = None) -> list[tuple[dict[str, str], str, int]]:
    """(environment overrides, --device, --threads) of each local worker.

    ``cuda``/``auto`` on a GPU machine: worker i sees only GPU i (round robin when there are more
    workers than GPUs); ``cuda:N``: all on GPU N; CPU: the cores split evenly, at least 1 thread each.
    """
    per = threads or spec.runtime.threads or max(1, len(os.sched_getaffinity(0)) // workers)
    if device.type == "cuda" and device.index is None:
        gpus = visible_gpus()
        return [({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}, "cuda", per) for i in range(workers)]
    return [({}, str(device), per) for _ in range(workers)]


def worker_env(env: dict[str, str], url: str) -> dict[str, str]:
    """The environment of a local worker process: this one's, its device settings ``env``, and the storage URL in
    ``KDSEARCH_STORAGE`` (the ``--storage`` default), so that a password never appears in a command line."""
    return {**os.environ, **env, STORAGE_ENV: url, "PYTHONUNBUFFERED": "1"}


def worker_command(
    spec: StudySpec,
    path: Path,
    device: str,
    threads: int,
    total: int,
    rank: int,
    overrides: Sequence[str] = (),
    *,
    debug: bool = False,
) -> list[str]:
    """The ``kdsearch worker`` command line of local worker ``rank``: join ``spec.name`` in the study's storage
    (or create it from the spec file at ``path``) and run trials until it holds ``total`` finished ones,
    stopping like on Ctrl-C if this process dies (``--parent-pid``). The URL is not on it (``ps`` shows command
    lines to every user): the worker reads it from ``KDSEARCH_STORAGE`` (``worker_env``)."""
    return [
        sys.executable,
        "-m",
        "kdsearch.cli",
        *(["--debug"] if debug else []),
        "worker",
        "--spec",
        str(path),
        "--study",
        spec.name,
        "--data-root",
        str(spec.data.root),
        "--device",
        device,
        "--threads",
        str(threads),
        "--trials",
        str(total),
        "--rank",
        str(rank),
        "--parent-pid",
        str(os.getpid()),
        *(arg for o in overrides for arg in ("--set", o)),
    ]


def start_workers(
    spec: StudySpec,
    path: Path,
    url: str,
    plan: list[tuple[dict[str, str], str, int]],
    *,
    total: int,
    logs: Path,
    overrides: Sequence[str] = (),
    debug: bool = False,
) -> list[tuple[int, subprocess.Popen, Path]]:
    """Start one ``kdsearch worker`` process per entry of ``plan`` (``worker_plan``); (rank, process, log) of each.

    Worker ``rank`` writes stdout and stderr to ``logs/worker-<rank>.log``. Each runs in its own
    session, so a Ctrl-C in the terminal reaches the workers only once, forwarded by ``stop_workers``.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[int, subprocess.Popen, Path]] = []
    for rank, (env, device, n_threads) in enumerate(plan):
        cmd = worker_command(spec, path, device, n_threads, total, rank, overrides, debug=debug)
        log = logs / f"worker-{rank}.log"
        with open(log, "w") as out:  # own session: Ctrl-C reaches the workers once, forwarded by us
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=worker_env(env, url),
            )
        procs.append((rank, proc, log))
    return procs


def wait_for_workers(
    procs: list[tuple[int, subprocess.Popen, Path]],
    stop_requested: Callable[[], bool],
    on_poll: Callable[[], None],
    poll_s: float = 1.0,
) -> None:
    """Return when every worker process has exited; raise KeyboardInterrupt once ``stop_requested()``.

    Checks every ``poll_s`` s and calls ``on_poll`` after each pause (e.g. to advance a progress bar).
    """
    while any(p.poll() is None for _, p, _ in procs):
        if stop_requested():
            raise KeyboardInterrupt
        time.sleep(poll_s)
        on_poll()


def failed_workers(procs: list[tuple[int, subprocess.Popen, Path]]) -> list[tuple[int, int, Path]]:
    """(rank, exit code, log) of each worker process that exited with a non-zero code."""
    return [(rank, p.returncode, log) for rank, p, log in procs if p.returncode != 0]


def stop_workers(procs: list, patience_s: float = 60.0, resend_s: float = 15.0) -> None:
    """SIGINT to each running worker, again every ``resend_s`` (in case one swallowed it), SIGKILL after ``patience_s``."""
    deadline = time.time() + patience_s
    try:
        while time.time() < deadline:
            alive = [p for p in procs if p.poll() is None]
            if not alive:
                return
            for p in alive:
                p.send_signal(signal.SIGINT)
            resend = min(deadline, time.time() + resend_s)
            for p in alive:
                try:
                    p.wait(timeout=max(0.1, resend - time.time()))
                except subprocess.TimeoutExpired:
                    pass
    except KeyboardInterrupt:  # a second Ctrl-C: no more patience
        pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_worker_processes(
    spec, path, url, study, dev, workers: int, trials: int, threads, overrides, resume: str, console, debug: bool
) -> bool:
    """``run --workers N``: start N ``kdsearch worker`` processes, show one progress bar until the study holds
    ``trials`` more finished trials, stop them on Ctrl-C (``StudyInterrupted``), report each failed worker's log.

    Returns False when a worker failed and the study holds fewer trials than asked; a KdsearchError when every
    worker failed before any trial completed."""
    echo = console.echo
    base = finished_count(study)
    total = base + trials
    logs = spec.resolved_output_dir() / "workers"
    plan = worker_plan(spec, dev, workers, threads)
    procs = start_workers(spec, path, url, plan, total=total, logs=logs, overrides=overrides, debug=debug)
    where = ", ".join(f"{d}{' (GPU ' + e['CUDA_VISIBLE_DEVICES'] + ')' if e else ''}" for e, d, _ in plan)
    echo(
        f"started {workers} workers ({where}; {plan[0][2]} thread{'s' * (plan[0][2] != 1)} each) until the study "
        f"holds {total} finished trials; logs in {logs}"
    )
    bar = console.progress(trials, f"trials ({workers} workers)", "trial")

    def advance() -> None:
        bar.update(max(0, min(finished_count(study) - base, trials) - bar.n))

    with StopSignals() as stop:  # Ctrl-C, or a scheduler's TERM: stop the workers
        try:
            wait_for_workers(procs, lambda: stop.requested, advance)
        except KeyboardInterrupt:
            bar.close()
            echo("\ninterrupted: stopping the workers (each marks its running trial FAILED)...", err=True)
            stop_workers([p for _, p, _ in procs])
            raise StudyInterrupted(
                f"{finished_count(study)} finished trials are kept in {shown_url(url)}.\nresume with: {resume}"
            ) from None
    advance()
    bar.close()
    failed = failed_workers(procs)
    for rank, rc, log in failed:
        tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        echo(f"worker {rank} exited with code {rc}; the end of {log}:\n  {tail}", err=True)
    done = finished_count(study)
    if (
        failed
        and len(failed) == len(procs)
        and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ):
        raise KdsearchError(
            f"every worker failed before a trial completed (see above); the study holds {done} finished trials"
        )
    if done < total:
        echo(f"warning: the study holds {done} of {total} finished trials", err=True)
    return not (failed and done < total)
