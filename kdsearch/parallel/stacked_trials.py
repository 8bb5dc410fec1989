"""K Optuna trials in flight per process, trained as one ``StudentStack`` (``runtime.trials_per_device``).

Each of K threads runs the ordinary worker loop (``workers.run_worker``: trial slot, heartbeats,
retries, exact trial count) with the ordinary objective (``search.make_objective``), so a trial's
params, user attrs and intermediate values are written exactly as one at a time. Only the
objective's training call differs: ``StackServer.train`` hands the trial to the main thread,
which trains every trial in flight in lock-step, one epoch at a time, and gives each thread its
epoch's result; the thread reports it to Optuna (pruning) and says whether its trial stays. A
pruned or finished trial leaves at the epoch boundary and the next trial of that thread takes its
place (continuous batching). Ctrl-C reaches the main thread: every trial in flight then ends as
FAILED through its own thread, and nothing is left RUNNING.

A trial that cannot stack (``stacked.stack_refusal``: feature methods, live teacher, streamed
images; or a student without ``vmap`` support, found by ``stacked.probe``) trains one at a time
in its thread, with one line saying why.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import optuna
import torch
from torch import nn

from ..data import Split
from ..distill.stacked import VAL_CHUNK, StudentStack, probe, stack_refusal
from ..distill.train import EpochResult, TrialPlan, sync
from ..errors import first_line, out_of_memory
from ..search.objective import SeedTrainer, StudyData, fresh_student, make_objective, plan_trial, train_each, train_plan
from ..signals import interruptible, shielded

JOIN_WAIT_S = 5.0  # the longest an epoch boundary waits for threads that are starting their next trial

if TYPE_CHECKING:
    from .workers import WorkerLoop


def empty_stack(data: StudyData, *, steps: int | None = None, val: Split | None = None) -> StudentStack:
    """A stack with no member yet, for the study's student, data and training settings (``steps`` per epoch and
    the ``val`` split scored after each: the study's unless given)."""
    spec = data.spec
    return StudentStack(
        fresh_student(data),
        data.val if val is None else val,
        batch_size=spec.student.batch_size,
        lr=spec.student.lr,
        steps=steps or data.steps,
        device=data.device,
    )


def out_of_memory_line(together: int) -> str:
    """What the run says when a stacked epoch ran out of memory and starts again ``together`` students at a time."""
    return (
        f"out of memory with the stacked students: the epoch starts again from its boundary, {together} at a time "
        "(no trial fails; a smaller -k / runtime.trials_per_device avoids the restart)"
    )


class StackCheck:
    """Whether a plan can train in a stack: ``stacked.stack_refusal``, then whether the study's student stacks at
    all (``stacked.probe``, run once); each reason is said once, after ``prefix(plan)``."""

    def __init__(self, data: StudyData, echo: Callable[[str], None], prefix: Callable[[TrialPlan], str]) -> None:
        self.data, self.echo, self.prefix = data, echo, prefix
        self.refusal: list[str | None] = []  # the probe's answer, once asked
        self.told: set[str] = set()

    def why_alone(self, plan: TrialPlan) -> str | None:
        """Why ``plan`` trains one at a time (said once per reason), or None when it stacks."""
        why = stack_refusal(plan)
        if why is None:
            if not self.refusal:
                self.refusal.append(probe(fresh_student(self.data), plan, self.data.val))
            if self.refusal[0] is not None:
                why = f"the student cannot be stacked ({self.refusal[0]})"
        if why is not None and why not in self.told:
            self.told.add(why)
            self.echo(f"{self.prefix(plan)}: {why}")
        return why


def add_fresh(stack: StudentStack, data: StudyData, key, plan: TrialPlan) -> None:
    """Add a fresh student of the study, initialized under ``plan.seed`` as ``search.train_plan`` would (same
    weights, same batch order), learning as ``plan`` says."""
    torch.manual_seed(plan.seed)
    stack.add(key, fresh_student(data), plan)


class StackStopped(KeyboardInterrupt):
    """Raised in a trial thread when the process stops (Ctrl-C, or another trial's error): its trial FAILs."""


@dataclass(eq=False)  # hashed by identity: the stack keys its members by seat
class _Seat:
    """One trial in the stack, seen from both sides."""

    plan: TrialPlan
    result: EpochResult | None = None  # set by the server, taken by the trial thread
    answered: bool = True  # the trial thread has handled the last result
    leave: bool = False  # pruned, finished or failed: leaves at the next boundary
    history: list[EpochResult] = field(default_factory=list)
    alone: str | None = None  # why it cannot stack: the main thread trains it on its own
    on_epoch: Callable[[EpochResult], None] | None = None  # an alone trial's reporting, called by the main thread
    outcome: BaseException | None = None  # how an alone trial ended, when not with its history
    done: bool = False


class StackServer:
    """The main thread's side: admits trials at epoch boundaries and trains them stacked (see module docstring)."""

    def __init__(self, data: StudyData, threads: int, *, echo: Callable[[str], None] = print) -> None:
        self.data = data
        self.check = StackCheck(data, echo, lambda plan: f"trials of {plan.method.name} run one at a time, not stacked")
        self.stack = empty_stack(data)
        self.stack.on_shrink = lambda n: echo(out_of_memory_line(n))
        self.cv = threading.Condition()
        self.pending: list[_Seat] = []
        self.starting: set[int] = set(range(threads))  # trial threads expected to hand over a trial soon
        self.local = threading.local()  # .index: which trial thread this is
        self.error: BaseException | None = None
        self.alone: list[_Seat] = []  # admitted trials that cannot stack, trained one at a time

    # ------------------------------------------------------------------ trial-thread side

    def train(self, plan: TrialPlan, on_epoch: Callable[[EpochResult], None]) -> list[EpochResult]:
        """``search.TrainFn`` for a trial thread: blocks until the trial has trained (or left the stack)."""
        seat = _Seat(plan, on_epoch=on_epoch)
        with self.cv:
            self._raise_if_stopped()
            self.pending.append(seat)
            self.starting.discard(self.local.index)
            self.cv.notify_all()
        while True:
            with self.cv:
                self.cv.wait_for(lambda: seat.result is not None or seat.done or self.error is not None)
                if seat.done:  # trained alone by the main thread
                    if seat.outcome is not None:
                        raise seat.outcome
                    return seat.history
                if seat.result is None:
                    seat.leave = seat.answered = True
                    self.cv.notify_all()
                    self._raise_if_stopped()
                r, seat.result = seat.result, None
            try:
                on_epoch(r)  # reports to Optuna; raises TrialPruned to stop
            except BaseException:
                self._answer(seat, leave=True)
                raise
            seat.history.append(r)
            finished = r.epoch >= seat.plan.epochs
            self._answer(seat, leave=finished)
            if finished:
                return seat.history

    def _answer(self, seat: _Seat, *, leave: bool) -> None:
        with self.cv:
            seat.leave = leave
            seat.answered = True
            if leave:
                self.starting.add(self.local.index)  # its next trial is on the way
            self.cv.notify_all()

    def _raise_if_stopped(self) -> None:
        if self.error is not None:
            raise StackStopped("" if isinstance(self.error, KeyboardInterrupt) else f"stopped: {self.error!r}")

    # ------------------------------------------------------------------ main-thread side

    def thread_idle(self) -> None:
        """The calling trial thread has no trial to start now (the study's count is reached, or it waits)."""
        with self.cv:
            self.starting.discard(self.local.index)
            self.cv.notify_all()

    def serve(self, alive: Callable[[], bool]) -> None:
        """Train the stack until no trial thread is ``alive()`` and none is in flight; on any error (Ctrl-C
        included) every trial thread is told to stop and the error is raised here after they have."""
        try:
            while True:
                with shielded():
                    self._admit(alive)
                if self.alone:
                    self._train_alone(self.alone.pop(0))
                    continue
                if not len(self.stack):
                    if not alive():
                        return
                    with self.cv:
                        self.cv.wait(0.05)
                    continue
                with interruptible():
                    results = self.stack.run_epoch()
                with shielded():
                    self._deliver(results)
        except BaseException as err:
            self.stop(err)
            raise

    def stop(self, err: BaseException) -> None:
        """Tell every trial thread to stop (its trial ends FAILED)."""
        with self.cv:
            if self.error is None:
                self.error = err
            self.cv.notify_all()

    def _admit(self, alive: Callable[[], bool]) -> None:
        """At an epoch boundary: wait (bounded) for starting threads to hand over their trial, then add
        every pending trial to the stack, each built under its own seed like ``search.train_plan``."""
        with self.cv:
            deadline = time.monotonic() + JOIN_WAIT_S
            while self.starting and alive() and self.error is None and time.monotonic() < deadline:
                self.cv.wait(0.02)
            self._raise_if_stopped()
            admitted, self.pending = self.pending, []
        for seat in admitted:
            seat.alone = self.check.why_alone(seat.plan)
            if seat.alone is not None:
                self.alone.append(seat)
            else:
                add_fresh(self.stack, self.data, seat, seat.plan)

    def _train_alone(self, seat: _Seat) -> None:
        """Train a trial that cannot stack here, one at a time, reporting through its ``on_epoch``; its thread
        gets the history, or the exception that ended it (pruned, failed)."""
        try:
            with interruptible():
                _, seat.history = train_plan(self.data, seat.plan, seat.on_epoch)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # TrialPruned, or the trial's own failure: its thread raises it
            seat.outcome = err
        with self.cv:
            seat.done = True
            self.cv.notify_all()

    def _deliver(self, results: dict) -> None:
        """Hand each trial thread its epoch's result, wait for all answers, take the leavers out."""
        with self.cv:
            for seat, r in results.items():
                seat.result, seat.answered = r, False
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.error is not None or all(s.answered for s in results))
            self._raise_if_stopped()
        for seat in results:
            if seat.leave:
                self.stack.remove(seat)


def run_stacked(
    data: StudyData,
    k: int,
    work: Callable[[Callable[[optuna.Trial], float], Callable[[int], None]], int],
    *,
    echo: Callable[[str], None] = print,
) -> int:
    """Run K trial threads, each ``work(objective, on_wait)`` (a worker loop over the study, e.g.
    ``workers.work_on_study`` with its arguments bound), with their training stacked here in the
    calling (main) thread; returns how many trials the threads ran. The first error of any thread or
    of the training (Ctrl-C included) stops them all and is raised after every thread has ended."""
    server = StackServer(data, k, echo=echo)
    objective = make_objective(data, train=server.train)
    ran: list[int] = []
    errors: list[BaseException] = []

    def thread_main(index: int) -> None:
        server.local.index = index
        try:
            ran.append(work(objective, lambda running: server.thread_idle()))
        except BaseException as err:  # reported to the main thread, which stops the others
            errors.append(err)
            server.stop(err)
        finally:
            server.thread_idle()

    threads = [
        threading.Thread(target=thread_main, args=(i,), name=f"kdsearch-trials-{i}", daemon=True) for i in range(k)
    ]
    for t in threads:
        t.start()
    failure: BaseException | None = None
    try:
        server.serve(lambda: any(t.is_alive() for t in threads))
    except BaseException as err:  # Ctrl-C here, or StackStopped after a thread's error
        failure = err
    finally:
        with shielded():
            for t in threads:
                t.join()
    own = [e for e in errors if not isinstance(e, StackStopped)]
    if own and (failure is None or isinstance(failure, StackStopped)):
        raise own[0]
    if failure is not None:
        raise failure
    return sum(ran)


def run_stacked_study(
    study: optuna.Study,
    store: optuna.storages.BaseStorage,
    url: str,
    data: StudyData,
    k: int,
    total: int,
    *,
    loop: WorkerLoop,
    echo: Callable[[str], None] = print,
) -> int:
    """Trials until the study holds ``total`` finished ones, K at a time in this process, trained stacked
    (``run_stacked`` over ``workers.work_on_study``, with ``loop``'s settings); how many this process ran."""
    from .workers import work_on_study

    echo(f"{k} trials at once on {data.device}, trained as one stacked model (runtime.trials_per_device)")

    def work(objective: Callable[[optuna.Trial], float], idle: Callable[[int], None]) -> int:
        def waiting(running: int) -> None:
            idle(running)
            if loop.on_wait is not None:
                loop.on_wait(running)

        return work_on_study(study, store, url, objective, total, replace(loop, poll_s=0.5, on_wait=waiting))

    return run_stacked(data, k, work, echo=echo)


def stacked_seed_trainer(data: StudyData, k: int, *, echo: Callable[[str], None] = print) -> SeedTrainer:
    """``final_comparison``'s ``train_seeds``: a candidate's seeds' plans trained K at a time as one stack (each seed's
    init and batch order as alone); one that cannot stack is trained seed after seed, saying why once."""
    check = StackCheck(
        data, echo, lambda plan: f"final comparison: {plan.method.name} students are trained one seed at a time"
    )

    def train(plans: list[TrialPlan]) -> list[nn.Module]:
        first = plans[0]
        if check.why_alone(first) is not None:
            return train_each(data, plans)
        models: list[nn.Module] = []
        for start in range(0, len(plans), k):
            chunk = plans[start : start + k]
            stack = empty_stack(data)
            stack.on_shrink = lambda n: echo(f"final comparison: {out_of_memory_line(n)}")
            for i, plan in enumerate(chunk):
                add_fresh(stack, data, i, plan)
            with interruptible():
                for _ in range(first.epochs):
                    stack.run_epoch()
            models += [stack.member_model(i, fresh_student(data)).to(data.device) for i in range(len(chunk))]
        return models

    return train


def resolve_trials_per_device(data: StudyData, *, echo: Callable[[str], None] = print) -> int:
    """``runtime.trials_per_device`` as a number: as given, or for ``"auto"`` 1 on a CPU (stacking gained
    ~1.3x at K = 4 and lost at 16 on the 2-core machine of benchmarks/RESULTS.md) and on a GPU the K
    that ``probe_trials_per_device`` finds best (1, said in one line, for a student that cannot stack)."""
    k = data.spec.runtime.trials_per_device
    if data.students and k != 1:
        echo(
            f"trials_per_device = {k}: K = 1 (a stack trains one architecture; this study's trials choose among "
            f"{len(data.students)} candidate students)"
        )
        return 1
    if k != "auto":
        return int(k)
    if data.device.type != "cuda":
        return 1
    best, rates, why = probe_trials_per_device(data)
    if why is not None:
        echo(f"trials_per_device = auto: K = 1 (the student cannot be stacked: {why})")
        return 1
    shown = ", ".join(f"K={n}: {r:.0f}" for n, r in rates.items())
    echo(f"trials_per_device = auto: K = {best} (student-steps/s {shown})")
    return best


def probe_trials_per_device(
    data: StudyData,
    candidates: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    *,
    steps: int = 5,
    memory_share: float = 0.6,
) -> tuple[int, dict[int, float], str | None]:
    """(best K, student-steps per second of each K tried, why the student cannot stack or None): a few stacked kd
    steps per K on the study's data, each epoch scored on a real validation chunk (as many rows as a study's epoch
    scores at once), stopping when the gain over the previous K falls under 10%, the device runs out of memory
    or its memory passes ``memory_share``."""
    device = data.device
    params = {"temperature": 4.0, "alpha": 0.5}
    why = probe(fresh_student(data), plan_trial(data, "kd", params, 0), data.val)
    if why is not None:
        return 1, {}, why
    val = Split(data.val.x[:VAL_CHUNK], data.val.y[:VAL_CHUNK])
    rates: dict[int, float] = {}
    best = 1
    for k in candidates:
        stack = empty_stack(data, steps=steps, val=val)
        stack.shrink_on_oom = False  # the probe stops at the K that does not fit
        try:
            for i in range(k):
                add_fresh(stack, data, i, replace(plan_trial(data, "kd", params, i), steps=steps))
            with warnings.catch_warnings():  # a small validation chunk: AUC may warn about a missing class
                warnings.simplefilter("ignore", UserWarning)
                stack.run_epoch()  # warm-up: kernels chosen, memory allocated
                sync(device)
                start = time.perf_counter()
                stack.run_epoch()
                sync(device)
                seconds = time.perf_counter() - start
        except RuntimeError as err:
            if not out_of_memory(err):
                return 1, rates, first_line(err)
            break
        finally:
            del stack
        rates[k] = k * steps / seconds
        if rates[k] > rates.get(best, 0.0) * 1.1:
            best = k
        elif k > 1:
            break
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            if (total - free) / total > memory_share:
                break
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best, rates, None
