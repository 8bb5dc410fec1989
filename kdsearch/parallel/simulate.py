"""A worker whose training is a sleep, for the soak harness (``benchmarks/soak.py``): everything else is the real
``kdsearch worker`` (its command line, trial slot, heartbeats, retries, exact count, the objective's report and
prune calls), so the harness measures what the storage holds, not what a 2-core box trains.

Turned on by the environment, never by a study file: ``KDSEARCH_SIMULATE_EPOCH_S`` (seconds per epoch: ``0.5``,
or ``0.2-1.0`` for a uniform draw per epoch) and, optionally, ``KDSEARCH_SOAK_STATS`` (a folder: each worker
writes there the latency of its storage calls and the storage errors it saw, ``worker-<rank>-<pid>.json``).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Callable

import optuna

from ..distill.train import EpochResult, TrialPlan
from ..signals import stop_requested

EPOCH_ENV = "KDSEARCH_SIMULATE_EPOCH_S"
STATS_ENV = "KDSEARCH_SOAK_STATS"
TIMED = {  # what the soak table calls a storage call → the method (the first one the storage has: Optuna's
    # cached RDB storage calls its backend's private ones)
    "ask": ("_create_new_trial", "create_new_trial"),
    "tell": ("set_trial_state_values",),
    "report": ("set_trial_intermediate_value",),
    "attr": ("set_trial_user_attr",),
    "read": ("_get_trials", "get_all_trials"),
}


def epoch_seconds() -> tuple[float, float] | None:
    """(low, high) seconds per epoch from ``KDSEARCH_SIMULATE_EPOCH_S``; None when unset (real training)."""
    text = os.environ.get(EPOCH_ENV, "").strip()
    if not text:
        return None
    low, _, high = text.partition("-")
    try:
        bounds = float(low), float(high or low)
    except ValueError:
        raise ValueError(f"{EPOCH_ENV}={text!r}: write seconds per epoch, e.g. 0.5 or 0.2-1.0") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise ValueError(f"{EPOCH_ENV}={text!r}: write seconds per epoch, e.g. 0.5 or 0.2-1.0")
    return bounds


def dump_stacks_on_usr1() -> None:
    """SIGUSR1 prints every thread's stack to stderr (the worker's log): what the harness sends a stuck worker."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)


def simulated_accuracy(params: dict, epoch: int, epochs: int, seed: int) -> float:
    """A learning curve that depends on T and alpha (best near T = 4, alpha = 0.3), so sampler and pruner act."""
    t, alpha = float(params.get("temperature", 4.0)), float(params.get("alpha", 0.3))
    quality = max(0.0, 1.0 - abs(math.log(max(t, 1e-3) / 4.0)) / 3.0 - abs(alpha - 0.3))
    noise = random.Random(seed * 1000 + epoch).uniform(-0.01, 0.01)
    return 0.5 + 0.4 * quality * (1.0 - math.exp(-3.0 * epoch / epochs)) + noise


def simulated_training(bounds: tuple[float, float]) -> Callable[[TrialPlan, Callable[[EpochResult], None]], list]:
    """A ``make_objective`` train function: each epoch a sleep drawn from ``bounds``, then ``on_epoch``."""

    def train(plan: TrialPlan, on_epoch: Callable[[EpochResult], None]) -> list[EpochResult]:
        draw = random.Random(plan.seed)
        history = []
        for epoch in range(1, plan.epochs + 1):
            end = time.monotonic() + draw.uniform(*bounds)
            while time.monotonic() < end:
                if stop_requested():
                    raise KeyboardInterrupt
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
            acc = simulated_accuracy(plan.params, epoch, plan.epochs, plan.seed)
            result = EpochResult(epoch=epoch, accuracy=acc, auc=min(1.0, acc + 0.05), train_loss=1.0 - acc)
            history.append(result)
            on_epoch(result)
        return history

    return train


def run_threads(k: int, work: Callable[[], int]) -> int:
    """``work()`` in K threads at once (each a worker loop); how many trials they ran. The first error of any
    thread is raised once every thread has ended (they stop on their own: a stop request ends their loops)."""
    ran: list[int] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            ran.append(work())
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            errors.append(err)

    threads = [threading.Thread(target=main, name=f"kdsearch-trials-{i}", daemon=True) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]
    return sum(ran)


class StorageStats:
    """Latency of a storage's calls (``TIMED``) and the errors they raised, recorded by wrapping the instance."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.times: dict[str, list[float]] = {name: [] for name in TIMED}
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        for name, methods in TIMED.items():
            method = next((m for m in methods if hasattr(storage, m)), None)
            if method is not None:
                setattr(storage, method, self._timed(getattr(storage, method), name))

    def _timed(self, call: Callable, name: str) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            except Exception as err:
                with self._lock:
                    key = type(err).__name__
                    self.errors[key] = self.errors.get(key, 0) + 1
                raise
            finally:
                with self._lock:
                    self.times[name].append(time.perf_counter() - start)

        return timed

    def time_slot(self, slot_class: type) -> None:
        """Also time ``slot_class`` (``workers.TrialSlot``, through its ``timer`` hook): how long a thread waits for
        the trial slot ("slot_wait") and then holds it ("slot_hold"), to tell whether the serial slot bounds the
        start rate."""
        slot_class.timer = self._record

    def _record(self, name: str, seconds: float) -> None:
        with self._lock:
            self.times.setdefault(name, []).append(seconds)

    def write(self, folder: Path, rank: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"worker-{rank}-{os.getpid()}.json"
        with self._lock:
            path.write_text(json.dumps({"rank": rank, "times": self.times, "errors": self.errors}))
        return path
