"""The worker loop in one process: Ctrl-C never leaves a trial RUNNING (Optuna's storage writes are
shielded, only training is interrupted), and a trial taken over by another worker does not stop it.

The signal is sent to this process from inside the storage (the exact moments a CI race hit),
so each case is deterministic.
"""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.parallel.workers import WORKER_ATTR, TrialSlot, WorkerLoop, run_worker, worker_identity
from kdsearch.signals import StopSignals, interruptible, raise_if_stop_requested, shielded, stop_requested

FAST = WorkerLoop(poll_s=0.01)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_inside_shielded_is_raised_when_the_block_ends():
    reached_end_of_block = False
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            with shielded():
                ctrl_c()
                reached_end_of_block = True
        assert stop.requested
    assert reached_end_of_block


def test_interruptible_raises_on_entry_after_a_shielded_signal_and_the_shield_then_stays_quiet():
    with StopSignals():
        with pytest.raises(KeyboardInterrupt):
            with shielded():
                ctrl_c()
                with interruptible():
                    raise AssertionError("entered an interruptible block after a stop request")
        # the KeyboardInterrupt left the shield with an exception: no second one on its way out


def test_without_stop_signals_the_helpers_do_nothing():
    """No StopSignals installed (e.g. the Python API in a notebook): the helpers change no handler, defer no
    interrupt and see no stop request."""
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with shielded():
            raise KeyboardInterrupt  # not deferred to the end of the shield: nothing to defer it
    with interruptible():
        raise_if_stop_requested()
    assert signal.getsignal(signal.SIGINT) is handler and not stop_requested()


class SignalingStorage(optuna.storages.InMemoryStorage):
    """Sends Ctrl-C to this process right after one chosen storage write."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when

    def create_new_trial(self, study_id, template_trial=None):
        trial_id = super().create_new_trial(study_id, template_trial)
        if self.when == "create":
            ctrl_c()
        return trial_id

    def set_trial_state_values(self, trial_id, state, values=None):
        done = super().set_trial_state_values(trial_id, state, values)
        if self.when == "finish" and state.is_finished():
            self.when = ""
            ctrl_c()
        return done


def objective_sending(when: str):
    """Like ``make_objective``'s: sampling shielded, the "training" interruptible."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        with interruptible():
            if when == "objective":
                ctrl_c()
        return x

    return objective


@pytest.mark.parametrize("when", ["create", "objective", "finish"])
def test_ctrl_c_at_any_moment_of_a_trial_leaves_nothing_running(when):
    storage = SignalingStorage(when if when != "objective" else "")
    study = optuna.create_study(storage=storage, study_name="s")
    with StopSignals():
        with pytest.raises(KeyboardInterrupt):
            run_worker(study, objective_sending(when), 5, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST)
    states = [t.state for t in study.trials]
    assert len(states) == 1 and TrialState.RUNNING not in states
    # interrupted while training (or just created): FAILED; interrupted while recording the end: kept
    assert states == [TrialState.COMPLETE if when == "finish" else TrialState.FAIL]


def test_without_a_stop_request_the_worker_runs_every_trial():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    with StopSignals() as stop:
        ran = run_worker(study, objective_sending(""), 4, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST)
    assert ran == 4 and not stop.requested
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def another_worker(storage) -> optuna.Study:
    """The study as another worker process sees it: its own Study object on the same storage."""
    return optuna.load_study(study_name="s", storage=storage)


def test_a_trial_failed_by_another_worker_meanwhile_does_not_stop_this_worker(capsys):
    """Another worker FAILs this worker's trial mid-run (its heartbeat looked stale): Optuna refuses to
    record the end; the worker says so and goes on to the total instead of crashing."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            another_worker(storage).tell(trial.number, state=TrialState.FAIL)  # its heartbeat looked stale
            trial.report(x, 1)  # raises UpdateFinishedTrialError, as the real on_epoch would
        return x

    ran = run_worker(study, objective, 3, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST)
    assert ran == 4
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert "trial 1 was marked FAILED by another worker" in capsys.readouterr().err


def test_a_trial_failed_by_another_worker_after_its_last_write_does_not_stop_this_worker(capsys):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            another_worker(storage).tell(trial.number, state=TrialState.FAIL)  # between the last epoch and the end
        return x

    assert run_worker(study, objective, 2, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST) == 3
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "trial 0 was marked FAILED by another worker" in capsys.readouterr().err


def test_a_trial_pruned_after_another_worker_failed_it_does_not_stop_this_worker(capsys):
    """Seen at 512 in flight on SQLite: the trial was FAILed elsewhere, then its own pruning raised TrialPruned and
    Optuna refused to record PRUNED ("Cannot tell a FAIL trial"); the worker goes on."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            another_worker(storage).tell(trial.number, state=TrialState.FAIL)
            raise optuna.TrialPruned("pruned after epoch 2")
        return x

    assert run_worker(study, objective, 2, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST) == 3
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "trial 1 was marked FAILED by another worker" in capsys.readouterr().err


@pytest.mark.parametrize("ends", ["pruned", "returned"])
def test_a_trial_failed_elsewhere_between_its_last_look_and_its_end_does_not_stop_this_worker(
    capsys, monkeypatch, ends
):
    """Seen at 512 in flight on SQLite: still running when its pruning was raised (or its value returned), FAILed by
    another worker before Optuna recorded the end ("Cannot tell a FAIL trial", or Optuna's own "Should not
    reach." raised while handling it); the worker goes on."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    real = storage.get_trial
    ended: list[int] = []  # the trial whose objective has just ended here
    looked: list[int] = []

    def get_trial(trial_id):  # Optuna reads the trial before recording its end: the takeover lands just before
        trial = real(trial_id)
        if ended and not looked and trial.number == ended[0] and trial.state == TrialState.RUNNING:
            looked.append(trial.number)
            another_worker(storage).tell(trial.number, state=TrialState.FAIL)
            return real(trial_id)
        return trial

    monkeypatch.setattr(storage, "get_trial", get_trial)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            ended.append(trial.number)  # still RUNNING here: pruned, or its value returned
            if ends == "pruned":
                raise optuna.TrialPruned("pruned after epoch 2")
        return x

    assert run_worker(study, objective, 2, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST) == 3
    assert looked == [1] and [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert "trial 1 was marked FAILED by another worker" in capsys.readouterr().err


def test_an_error_of_the_trial_itself_stops_the_worker():
    """Only a takeover is passed over: the objective's own ValueError fails its trial and ends the worker."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        raise ValueError("only one class present in y_true")

    with pytest.raises(ValueError, match="only one class"):
        run_worker(study, objective, 3, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST)
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_no_trial_starts_while_the_study_has_its_most_in_flight(capsys):
    """runtime.max_in_flight (on SQLite, the bound the soak measured): a worker waits for a free place, says so
    once, and starts its trial when one frees up; the bound is checked under the trial slot, so it holds exactly."""
    import threading
    import time

    from kdsearch.search.storage import SQLITE_MAX_IN_FLIGHT, in_flight_bound

    assert in_flight_bound("sqlite:///s.db") == SQLITE_MAX_IN_FLIGHT and in_flight_bound("sqlite:///s.db", 8) == 8
    assert in_flight_bound("postgresql://u@h/db") is None and in_flight_bound("journal:////tmp/j.log") is None
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    elsewhere = another_worker(storage).ask()  # another worker's trial fills the one place
    elsewhere.set_user_attr(WORKER_ATTR, worker_identity())  # claimed by a live process: not failed as unclaimed
    ran: list[int] = []
    loop = WorkerLoop(poll_s=0.01, grace_s=0.06, max_in_flight=1)  # waits of max(poll_s, grace_s / 6) while full
    thread = threading.Thread(
        target=lambda: ran.append(
            run_worker(study, lambda t: 1.0, 2, TrialSlot("", storage, "s"), heartbeat=False, loop=loop)
        )
    )
    thread.start()
    time.sleep(0.3)
    assert len(study.trials) == 1  # full: nothing started
    another_worker(storage).tell(elsewhere.number, 0.5)
    thread.join(10)
    assert ran == [1] and [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert capsys.readouterr().err.count("1 trials are in flight, the most this study runs at once") == 1


def test_threads_waiting_for_a_free_place_look_once_per_process_not_each():
    """At 256 in flight with 256 more threads waiting, each thread's own look every few seconds kept the SQLite file
    busy enough that live trials' heartbeats lagged past the grace period; one look per process per wait."""
    import threading
    import time

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    elsewhere = another_worker(storage).ask()
    elsewhere.set_user_attr(WORKER_ATTR, worker_identity())
    reads: list[float] = []
    get_all = storage.get_all_trials

    def counted(*args, **kwargs):
        reads.append(time.monotonic())
        return get_all(*args, **kwargs)

    storage.get_all_trials = counted
    loop = WorkerLoop(poll_s=0.01, grace_s=0.6, max_in_flight=1)  # a look per 0.1 s while full
    threads = [
        threading.Thread(target=run_worker, args=(study, lambda t: 1.0, 2, TrialSlot("", storage, "s")),
                         kwargs={"heartbeat": False, "loop": loop})
        for _ in range(4)
    ]  # fmt: skip
    for t in threads:
        t.start()
    time.sleep(1.0)
    during = len([r for r in reads if r > reads[0] + 0.2])  # after the first looks
    another_worker(storage).tell(elsewhere.number, 0.5)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert during <= 8 * 3  # one thread's looks (each look reads the study a few times), not four threads'


def test_a_trial_made_while_the_slot_was_lost_is_given_up_when_another_took_its_place(capsys):
    """A PostgreSQL restart ends the session holding the advisory lock while a worker makes its trial; another
    worker takes the lock, counts the same free place and starts a trial too (161 finished of 160). The first
    worker finds its slot lost, counts again and gives its untrained trial up: the study ends with its total."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    study.tell(study.ask(), 0.1)
    taken: list[int] = []

    class LostOnce(TrialSlot):
        def kept(self) -> bool:
            if taken:
                return super().kept()
            other = another_worker(storage).ask()  # the other worker, in the gap: same count, same place
            other.set_user_attr(WORKER_ATTR, worker_identity())
            taken.append(other.number)
            return False

    trained: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        trained.append(trial.number)
        return 0.5

    loop = WorkerLoop(poll_s=0.01, stop_when_done=True)
    ran = run_worker(study, objective, 2, LostOnce("", storage, "s"), heartbeat=False, loop=loop)
    states = {t.number: t.state for t in study.trials}
    assert ran == 0 and not trained  # nothing trained for the surplus trial, and nothing else to start
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.RUNNING} and taken == [2]
    assert "given up before it trained" in study.trials[1].user_attrs["surplus"]
    err = capsys.readouterr().err
    assert err.count("trial 1 was given up before it trained") == 1 and "Traceback" not in err


def test_a_trial_made_while_the_slot_was_lost_runs_when_its_place_is_still_free():
    """The slot was lost, but nobody else started a trial meanwhile: the trial is not surplus and trains."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")

    class AlwaysLost(TrialSlot):
        def kept(self) -> bool:
            return False

    ran = run_worker(study, lambda t: 0.5, 3, AlwaysLost("", storage, "s"), heartbeat=False, loop=FAST)
    assert ran == 3 and [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_the_trial_slot_times_its_waits_and_holds_for_the_soak(monkeypatch):
    """``simulate.StorageStats.time_slot`` sets the slot's ``timer`` hook: one wait and one hold per trial start."""
    from kdsearch.parallel.simulate import StorageStats

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    monkeypatch.setattr(TrialSlot, "timer", None)
    stats = StorageStats(storage)
    stats.time_slot(TrialSlot)
    run_worker(study, lambda t: 0.5, 3, TrialSlot("", storage, "s"), heartbeat=False, loop=FAST)
    waits, holds = stats.times["slot_wait"], stats.times["slot_hold"]
    assert len(waits) == len(holds) >= 3 and all(s >= 0 for s in waits + holds)
