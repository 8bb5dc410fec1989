"""Liveness kept in the study (parallel/beats.py) and storage calls that ride out a restart (search/retrying.py),
on an in-memory storage with a hand-driven clock."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy

import kdsearch.parallel.beats as beats
import kdsearch.search.retrying as retrying
from kdsearch.parallel.beats import BEAT_ATTR, SilentTrials, TrialBeats, UnclaimedTrials
from kdsearch.parallel.workers import WORKER_ATTR, fail_and_requeue, fail_trial, process_beats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(beats.time, "monotonic", c)
    return c


def requeue(study: optuna.Study, number: int) -> bool:
    return fail_and_requeue(study, number, max_retry=2)


def _study() -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_a_trial_whose_beats_stand_still_is_failed_and_queued_again(clock):
    study = _study()
    alive, dead = study.ask(), study.ask()
    for t in (alive, dead):
        t.suggest_float("x", 0, 1)
        study._storage.set_trial_system_attr(t._trial_id, BEAT_ATTR, 1)
    checker = SilentTrials(grace_s=30)
    assert checker.fail_silent(study, set(), requeue) == []  # first sight: nothing is silent yet
    clock.now += 20
    study._storage.set_trial_system_attr(alive._trial_id, BEAT_ATTR, 2)  # this one beats
    assert checker.fail_silent(study, set(), requeue) == []
    clock.now += 15  # 35 s unchanged for `dead`, 15 s for `alive`
    assert checker.fail_silent(study, set(), requeue) == [dead.number]
    states = {t.number: t.state for t in study.trials}
    assert (
        states[dead.number] == optuna.trial.TrialState.FAIL and states[alive.number] == optuna.trial.TrialState.RUNNING
    )
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == dead.params  # same params, queued


def test_a_process_never_fails_its_own_trials(clock):
    study = _study()
    mine = study.ask()
    checker = SilentTrials(grace_s=1)
    checker.fail_silent(study, {mine._trial_id}, requeue)
    clock.now += 60
    assert checker.fail_silent(study, {mine._trial_id}, requeue) == []


def test_trial_beats_count_up_from_one_thread_per_process():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    b = TrialBeats(storage, interval_s=3600)
    b.add(trial._trial_id)  # beats at once: a fresh trial is never silent
    assert study.trials[0].system_attrs[BEAT_ATTR] == 1
    assert b.own() == {trial._trial_id}
    study.tell(trial, 1.0)
    b._beat(trial._trial_id)  # finished meanwhile: dropped, no error
    assert b.own() == set()
    assert process_beats(storage, 10) is process_beats(storage, 10)  # one per storage and process


def test_an_unclaimed_running_trial_is_failed_after_the_grace_period(clock):
    study = _study()
    orphan, claimed = study.ask(), study.ask()
    claimed.set_user_attr(WORKER_ATTR, {"host": "h", "pid": 1, "start": "", "rank": 0})
    checker = UnclaimedTrials(grace_s=30, claim_attr=WORKER_ATTR)
    assert checker.fail_unclaimed(study, fail_trial) == []
    clock.now += 31
    assert checker.fail_unclaimed(study, fail_trial) == [orphan.number]
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]
    assert len(study.trials) == 2  # no retry: it never had params


def test_retried_calls_ride_out_an_unreachable_server_and_nothing_else(monkeypatch):
    monkeypatch.setattr(retrying.time, "sleep", lambda s: None)
    calls = []

    class Flaky:
        def read(self, fail_with):
            calls.append(1)
            if len(calls) < 3:
                raise fail_with
            return "ok"

    cls = retrying.retrying_class(Flaky, ["read"], retrying.rdb_transient, lambda s: "db")
    down = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert cls().read(down) == "ok" and len(calls) == 3
    calls.clear()
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = down
    assert cls().read(wrapped) == "ok"  # Optuna's wrapper around a lost connection counts too
    calls.clear()
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # a constraint is not a restart: raised at once
        cls().read(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert len(calls) == 1


@pytest.mark.parametrize("name", retrying.CREATE_CALLS)
def test_a_queued_trial_whose_creation_answer_was_lost_is_made_once(monkeypatch, tmp_path, name):
    """The server commits a template's creation, then the answer is lost: the retry returns that trial instead of
    making a second (a queued retry made twice ran twice: 161 finished of 160 with PostgreSQL restarted)."""
    monkeypatch.setattr(retrying.time, "sleep", lambda s: None)
    lost = [0]

    class LosesAnswers(optuna.storages.RDBStorage):
        pass

    def create(self, study_id, template_trial=None):
        made = getattr(optuna.storages.RDBStorage, name)(self, study_id, template_trial)
        if lost[0]:
            lost[0] -= 1
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        return made

    setattr(LosesAnswers, name, create)
    cls = retrying.retrying_class(LosesAnswers, [name], retrying.rdb_transient, lambda s: "db")
    storage = cls(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage)
    study_id = study._study_id
    lost[0] = 1
    template = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params={}, distributions={})
    answer = getattr(storage, name)(study_id, template)
    trials = storage.get_all_trials(study_id)
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.WAITING
    assert (answer if isinstance(answer, int) else answer._trial_id) == trials[0]._trial_id
    assert lost == [0]  # the first try was lost and retried
    lost[0] = 2  # two lost answers in a row, another template: still one trial more
    getattr(storage, name)(study_id, template)
    assert len(storage.get_all_trials(study_id)) == 2
    tokens = {t.system_attrs[retrying.CREATE_TOKEN_ATTR] for t in storage.get_all_trials(study_id)}
    assert len(tokens) == 2 and not template.system_attrs  # one token per creation; the caller's template untouched
    lost[0] = 1  # a plain new trial has no template to carry a token: made twice, the unclaimed one is failed later
    getattr(storage, name)(study_id)
    assert len(storage.get_all_trials(study_id)) == 4


def test_a_retried_call_gives_up_once_its_time_is_spent(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(retrying.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(retrying.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    down = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("could not connect to server"))
    calls = []

    def call():
        calls.append(now[0])
        raise down

    with pytest.raises(sqlalchemy.exc.OperationalError):
        retrying.call_retrying(call, retrying.rdb_transient, lambda: "db", retry_s=10.0)
    assert len(calls) > 3 and calls[-1] == pytest.approx(10.0)  # backed off, last try at the deadline, then raised
    assert all(b - a <= 5.0 * 1.5 for a, b in zip(calls, calls[1:]))  # pauses capped
