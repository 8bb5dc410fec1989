"""End to end: run a tiny study, open its report.html in headless Chromium, check it renders.

Uses Debian's ``chromium`` (installed by ``make test``) driven by Playwright's sync API; it never
downloads a browser. The report must work offline (plotly's JS is embedded), so the page may not
raise script errors, log console errors, or fail any request.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import optuna
import pytest
import torch
from helpers import CHROMIUM_ARGS, chromium_path
from PIL import Image
from typer.testing import CliRunner

from kdsearch.cli import app

# Words each figure's title must contain, in page order, for the tiny kd-only study (no feature-weight
# figure, too few trials for a T × alpha map): accuracy vs T (the objective's first), AUC vs T,
# optimization history (validation), final comparison (test).
TITLE_WORDS = ["accuracy", "auc", "history", "scratch"]
RENDER_TIMEOUT_MS = 60_000  # generous: a cold Chromium on a loaded 2-core box


def _tiny_study(tmp_path: Path, write_spec) -> Path:
    """Run a 3-trial study on a small slice of Fashion-MNIST; return its report.html."""
    # one torch thread: faster than all cores when the machine is shared
    spec = write_spec(cache=tmp_path / "cache", extra="threads = 1\n")  # appended to [runtime]
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    try:
        result = CliRunner().invoke(app, ["run", "--spec", str(spec), "--trials", "3"])
    finally:  # `kdsearch run` sets these process-wide; leave them as other tests expect
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)
    if result.exit_code != 0:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"kdsearch run failed (exit code {result.exit_code}):\n{result.output}\n{trace}")
    report = tmp_path / "run" / "report.html"
    assert report.is_file(), f"kdsearch run did not write {report}:\n{result.output}"
    return report


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path, write_spec) -> None:
    chromium = chromium_path("the report")
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing; run `make test` (it installs the test extras)")

    report = _tiny_study(tmp_path, write_spec)
    shot = tmp_path / "report.png"
    page_errors: list[str] = []
    console_errors: list[str] = []
    failed_requests: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=120_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("requestfailed", lambda req: failed_requests.append(f"{req.url}: {req.failure}"))
            page.goto(report.resolve().as_uri(), wait_until="load")

            n_figures = page.locator("div[id^=figure-]").count()
            assert n_figures == len(TITLE_WORDS), (
                f"expected {len(TITLE_WORDS)} figures (accuracy vs T, AUC vs T, history, final), got {n_figures}"
            )
            assert page.locator("section.figure").count() == n_figures
            # Every plotly div has drawn its SVG (plotly.js ran) and holds at least one trace.
            try:
                page.wait_for_function(
                    """() => {
                        const divs = [...document.querySelectorAll('div[id^=figure-]')];
                        return divs.length > 0 && divs.every(d => d.querySelector('svg.main-svg')
                            && Array.isArray(d.data) && d.data.length > 0);
                    }""",
                    timeout=RENDER_TIMEOUT_MS,
                )
            except PlaywrightTimeoutError:
                drawn = page.eval_on_selector_all(
                    "div[id^=figure-]",
                    "divs => divs.map(d => d.id + ': ' + (d.querySelector('svg.main-svg') ? 'drawn' : 'empty'))",
                )
                pytest.fail(
                    f"plotly did not draw every figure within {RENDER_TIMEOUT_MS} ms: {drawn}; "
                    f"script errors: {page_errors}; console errors: {console_errors}"
                )
            titles = page.eval_on_selector_all(
                "div[id^=figure-]", "divs => divs.map(d => (d.querySelector('.gtitle') || {}).textContent || '')"
            )
            assert all(t.strip() for t in titles), f"a figure has no title: {titles}"
            assert all(w in t.lower() for w, t in zip(TITLE_WORDS, titles)), f"figure titles {titles}"
            # No empty plot: each figure drew some points, bars or lines.
            marks = page.eval_on_selector_all(
                "div[id^=figure-]",
                "divs => divs.map(d => d.querySelectorAll('.point, path.js-line, g.bars path').length)",
            )
            assert all(n > 0 for n in marks), f"a figure drew nothing: marks per figure {marks}"

            summary = page.locator("table#summary").inner_text()
            assert "scratch" in summary and "teacher" in summary, summary
            assert "val accuracy" in summary, summary  # the best trial's metric is named, not "objective"
            best = page.locator("table#best-per-method").inner_text()
            assert "kd" in best, best
            final = page.locator("table#final-comparison").inner_text()
            assert "scratch" in final and "pp" in final and "teacher" in final, final
            # The teacher's dashed line has a legend entry in the final comparison figure.
            legend = page.eval_on_selector_all(
                "div[id^=figure-]",
                "divs => divs.map(d => [...d.querySelectorAll('.legendtext')].map(e => e.textContent))",
            )
            assert "teacher (test)" in legend[-1], f"legend of the final comparison: {legend[-1]}"
            assert page.locator('meta[name="viewport"]').count() == 1
            assert "kdsearch report: tiny" in page.title()

            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert not page_errors, f"script errors on the page: {page_errors}"
    assert not console_errors, f"console errors on the page: {console_errors}"
    assert not failed_requests, f"the report is not self-contained; failed requests: {failed_requests}"

    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        width, height = rgb.size
        assert width >= 1000 and height >= n_figures * 480, f"screenshot is {width}x{height}"
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, f"screenshot has only {len(colours)} distinct colours: blank page?"
        # The report uses white plot backgrounds (plotly_white), so a real page is mostly white; a blank
        # one is all white. (That every figure drew marks is checked above, in the DOM.)
        near_white = sum(n for n, (r, g, b) in colours if min(r, g, b) >= 245)
        assert near_white / (width * height) < 0.985, f"screenshot is {near_white / (width * height):.1%} white"
