"""A SQLite study file shared by worker processes: a trial's end is written atomically (search/storage.py)."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.search.storage import open_storage


def test_two_workers_ending_one_trial_on_sqlite_cannot_both_win(tmp_path, monkeypatch):
    """Seen at 512 in flight: a worker FAILed a live trial it took for dead (and queued its retry) while the trial's
    own worker wrote PRUNED; both writes went through (pysqlite read the trial's state outside the write's
    transaction), so the trial and its retry both counted: 601 of 600. Now the second writer sees the first's end."""
    url = f"sqlite:///{tmp_path}/study.db"
    owner, checker = open_storage(url), open_storage(url)  # two engines: two worker processes
    study = optuna.create_study(storage=owner, study_name="s")
    trial_id = study.ask()._trial_id
    read, ended_elsewhere = threading.Event(), threading.Event()
    check = optuna.storages.RDBStorage.check_trial_is_updatable

    def slow_check(self, tid, state):  # the owner pauses between reading the trial's state and writing its end
        if threading.current_thread().name == "owner":
            read.set()
            ended_elsewhere.wait(1.0)
        return check(self, tid, state)

    monkeypatch.setattr(optuna.storages.RDBStorage, "check_trial_is_updatable", slow_check)
    results: dict[str, object] = {}

    def end(name: str, storage, state: TrialState, values) -> None:
        try:
            results[name] = storage.set_trial_state_values(trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError as err:
            results[name] = err

    owner_thread = threading.Thread(target=end, args=("owner", owner, TrialState.PRUNED, None), name="owner")
    owner_thread.start()
    assert read.wait(10)
    end("checker", checker, TrialState.FAIL, None)
    ended_elsewhere.set()
    owner_thread.join(30)
    won = [name for name, r in results.items() if r is True]
    assert len(won) == 1, results  # exactly one end is recorded; the other writer is told the trial has finished
    final = owner.get_trial(trial_id).state
    assert final == (TrialState.PRUNED if won == ["owner"] else TrialState.FAIL)


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.FAIL])
def test_an_ordinary_end_on_sqlite_is_recorded(tmp_path, state):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/study.db"), study_name="s")
    trial = study.ask()
    study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    assert study.trials[0].state == state and study.trials[0].datetime_complete is not None
