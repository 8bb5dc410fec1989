"""Ctrl-C and TERM as a stop request: ``StopSignals``, for the processes of ``run`` and ``worker``.

Standard library only, so a command installs it before it imports torch and Optuna. Storage
writes run ``shielded()``: a signal that arrives while Optuna creates a trial or records its
end is remembered and raised at the next ``interruptible()`` block (the trial's training), so
no trial is left RUNNING by a Ctrl-C that landed between two database writes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Optional


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or TERM) stopped a study; the message says what is kept and how to go on."""


class StopSignals:
    """While active, SIGINT and SIGTERM set ``requested`` and, outside ``shielded()``, raise KeyboardInterrupt.

    ``requested`` is remembered because Python swallows a KeyboardInterrupt raised inside a
    finalizer ("Exception ignored in ..."), so loops poll it too. Installed explicitly, so a
    process started in the background (SIGINT inherited as ignored) still stops on SIGINT, and
    TERM ends a trial as FAILED.
    """

    def __init__(self, last: bool = False) -> None:
        """``last``: the process ends right after the block, so a signal then is ignored rather than handed to the
        previous handler (Python's default one kills the process by SIGINT while the finished run shuts down)."""
        self.last = last
        self.requested = False
        self._shield = 0
        self._pending = False
        self._previous: dict = {}
        self._outer: Optional[StopSignals] = None
        self._previous_hook = sys.unraisablehook

    def _handler(self, signum, frame) -> None:
        self.requested = True
        self._pending = bool(self._shield)
        if not self._shield:
            raise KeyboardInterrupt

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """A signal during the block only sets ``requested``; it raises when the outermost shield ends
        normally, or on entry to the next ``interruptible()`` block."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if not self._shield and self._pending:  # reached only when the block ended without an exception
            self._pending = False
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Signals interrupt again inside the block, even within ``shielded()``; one that came
        while shielded raises KeyboardInterrupt on entry."""
        saved, self._shield = self._shield, 0
        try:
            if self.requested:
                self._pending = False
                raise KeyboardInterrupt
            yield
        finally:
            self._shield = saved

    def _unraisable(self, info) -> None:
        """``sys.unraisablehook`` while active: the KeyboardInterrupt of a signal that landed in a finalizer is
        dropped quietly (``requested`` is set, and the training loops raise it again within a step); anything
        else goes to the previous hook."""
        if isinstance(info.exc_value, KeyboardInterrupt) and self.requested:
            return
        self._previous_hook(info)

    def __enter__(self) -> "StopSignals":
        global _active
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.last else handler)
        sys.unraisablehook = self._previous_hook
        _active = self._outer


_active: Optional[StopSignals] = None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def shielded() -> ContextManager[None]:
    """``StopSignals.shielded`` of the active instance; nothing when none is installed, or outside the main
    thread (signals reach only the main thread; the trial threads of stacked training stop another way)."""
    return _active.shielded() if _active is not None and _in_main_thread() else nullcontext()


def interruptible() -> ContextManager[None]:
    """``StopSignals.interruptible`` of the active instance; nothing when none is installed or outside the
    main thread (see ``shielded``)."""
    return _active.interruptible() if _active is not None and _in_main_thread() else nullcontext()


def raise_if_stop_requested() -> None:
    """KeyboardInterrupt when a signal came and the main thread is not shielded: for loops that train, so that a
    signal whose KeyboardInterrupt Python swallowed (it landed in a finalizer) still stops them within a step."""
    if _active is not None and _active.requested and not _active._shield and _in_main_thread():
        raise KeyboardInterrupt


def stop_requested() -> bool:
    """Whether the active instance has seen SIGINT or TERM (False when none is installed)."""
    return _active is not None and _active.requested


def stop_with_parent(parent_pid: int) -> None:
    """Have Linux send this process SIGTERM when its parent ``parent_pid`` dies (even by kill -9), so
    a worker of ``run --workers`` stops like on Ctrl-C instead of running on orphaned; TERM now
    if the parent is already gone. Other systems: nothing (stop such workers by hand)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
