"""Progress that fits where it goes: a tqdm bar on a terminal, a plain line now and then elsewhere.

In a log file or CI a tqdm bar writes one carriage-return update per step (thousands of them for a
teacher's training); ``LineProgress`` writes a line at each tenth of the way and at the end instead,
with the same calls (``update``, ``set_postfix``, ``close``, ``n``).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Protocol

from tqdm import tqdm


class Progress(Protocol):
    """What the commands call on a progress bar."""

    n: int

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **values: Any) -> Any: ...
    def close(self) -> Any: ...


class LineProgress:
    """A progress report as lines: ``desc: 10/50 trials (20%), best=0.8812`` at each tenth of ``total`` (or after
    ``every_s`` seconds without a line, for slow steps), and once more at ``close`` when the end was not shown."""

    def __init__(self, total: int, desc: str, unit: str, *, stream: IO[str], every_s: float = 60.0) -> None:
        self.total, self.desc, self.unit, self.stream, self.every_s = total, desc, unit, stream, every_s
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._shown = 0  # n of the last line
        self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        step = max(1, self.total // 10)
        if self.n // step > self._shown // step or time.monotonic() - self._last >= self.every_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if not self._closed and self.n != self._shown:
            self._line()
        self._closed = True

    def _line(self) -> None:
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        self.stream.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s{share}{', ' + extra if extra else ''}\n")
        self.stream.flush()
        self._shown, self._last = self.n, time.monotonic()


def progress_bar(
    total: int, desc: str, unit: str, *, leave: bool = True, enabled: bool = True, stream: IO[str] | None = None
) -> Progress:
    """A tqdm bar when ``stream`` (default stderr) is a terminal, ``LineProgress`` lines when it is not, nothing
    (a disabled bar) when not ``enabled``."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return LineProgress(total, desc, unit, stream=stream)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def configure_logging(*, verbose: bool = False) -> None:
    """kdsearch's log lines to stderr, once: INFO and up with ``verbose`` (``--verbose``: what data reading did),
    WARNING and up otherwise; just the message, as the rest of the output."""
    logger = logging.getLogger("kdsearch")
    handler = next((h for h in logger.handlers if getattr(h, "_kdsearch", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._kdsearch = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    handler.stream = sys.stderr  # the current stderr (a test runner may have swapped and closed the old one)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


@dataclass
class Console:
    """Where a run's lines and progress bars go."""

    echo: Callable[..., None] = field(
        default=lambda text, err=False: print(text, file=sys.stderr if err else sys.stdout)
    )
    bars: bool = True

    def progress(self, total: int, desc: str, unit: str, *, leave: bool = True) -> Progress:
        """A bar on a terminal, a line at each tenth elsewhere (a log file, CI), nothing without ``bars``."""
        return progress_bar(total, desc, unit, leave=leave, enabled=self.bars)
