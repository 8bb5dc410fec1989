"""Output that fits where it goes: bars on a terminal, a few lines in a log file; --verbose log lines."""

from __future__ import annotations

import io
import logging

from tqdm import tqdm
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.progress import Console, LineProgress, configure_logging, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_a_line_per_tenth_not_one_per_step():
    out = io.StringIO()
    bar = progress_bar(2500, "teacher bn_cnn", "step", stream=out)
    assert isinstance(bar, LineProgress)
    for step in range(2500):
        bar.update()
        if step == 1200:
            bar.set_postfix(epoch=1, val_acc="0.8123")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == "teacher bn_cnn: 250/2500 steps (10%)"
    assert lines[-1] == "teacher bn_cnn: 2500/2500 steps (100%), epoch=1, val_acc=0.8123"


def test_close_shows_the_end_once_and_a_short_run_still_reports():
    out = io.StringIO()
    bar = progress_bar(3, "trials", "trial", stream=out)
    bar.update()
    bar.update()
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == ["trials: 1/3 trials (33%)", "trials: 2/3 trials (67%)"]


def test_a_terminal_gets_a_tqdm_bar_and_no_bars_gets_nothing():
    assert isinstance(progress_bar(10, "trials", "trial", stream=Terminal()), tqdm)
    quiet = io.StringIO()
    bar = progress_bar(10, "trials", "trial", enabled=False, stream=quiet)
    bar.update()
    bar.close()
    assert quiet.getvalue() == ""
    assert isinstance(Console(bars=True).progress(5, "x", "y"), LineProgress)  # pytest's stderr is no terminal


def test_verbose_shows_info_lines_and_the_default_only_warnings(capsys):
    log = logging.getLogger("kdsearch.data.idx")
    try:
        configure_logging(verbose=False)
        log.info("data: hidden")
        log.warning("data: skipped 2 unreadable image(s)")
        configure_logging(verbose=True)
        log.info("data: using the train split")
        err = capsys.readouterr().err
        assert "data: hidden" not in err
        assert "data: skipped 2 unreadable image(s)" in err and "data: using the train split" in err
    finally:
        configure_logging(verbose=False)


def test_the_cli_takes_verbose():
    result = CliRunner().invoke(app, ["--verbose", "run", "--help"])
    assert result.exit_code == 0, result.output
    assert "--trials-per-device" in result.output
