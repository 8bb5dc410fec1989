"""Ctrl-C and TERM as a stop request: ``StopSignals``, for the processes of ``run --workers`` and ``worker``.

Standard library only, so a command installs it before it imports torch and Optuna.
"""

from __future__ import annotations

import signal


class StopSignals:
    """While active, SIGINT and SIGTERM raise KeyboardInterrupt and are remembered in ``requested``.

    Remembered because Python swallows a KeyboardInterrupt raised inside a finalizer ("Exception
    ignored in ..."), so loops poll ``requested`` too. Installed explicitly, so a process started in
    the background (SIGINT inherited as ignored) still stops on SIGINT, and TERM ends a trial as FAILED.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
