"""The docs site in a real browser: build it, serve it on 127.0.0.1, open it in headless Chromium.

Uses Debian's ``chromium`` driven by Playwright's sync API, as ``tests/report/test_report_browser.py`` does (it
never downloads a browser). The landing page and the study-file reference must render, the navigation must hold
every page of ``mkdocs.yml``, every internal link of the navigation must load (no 404), and no page may raise a
script error, log a console error or fail a request: the site works offline.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest
import yaml
from helpers import CHROMIUM_ARGS, REPO, chromium_path

KNOWN_FIELD = "search.pruner_warmup_epochs"  # a row the study-file reference must show


def _nav_pages(nav) -> list[str]:
    """The Markdown files of mkdocs.yml's nav, in order."""
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _url_path(page: str) -> str:
    """The site path of a docs page with ``use_directory_urls`` (``reference/cli.md`` → ``/reference/cli/``)."""
    stem = page.removesuffix(".md")
    return "/" if stem == "index" else f"/{stem.removesuffix('/index')}/"


def _build(site: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.mark.slow
def test_docs_site_renders_and_every_nav_link_loads(tmp_path: Path) -> None:
    chromium = chromium_path("the docs")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing; run `make test` (it installs the test extras)")

    site = tmp_path / "site"
    _build(site)
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    expected = [_url_path(p) for p in _nav_pages(config["nav"])]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    page_errors: list[str] = []
    console_errors: list[str] = []
    failed: list[str] = []

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=120_000)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(30_000)
                page.on("pageerror", lambda err: page_errors.append(f"{page.url}: {err}"))
                page.on(
                    "console",
                    lambda msg: console_errors.append(f"{page.url}: {msg.text}") if msg.type == "error" else None,
                )
                # a request the next navigation cuts short (the favicon, the search index) is aborted, not failed
                page.on(
                    "requestfailed",
                    lambda req: (
                        failed.append(f"{req.url}: {req.failure}") if "ERR_ABORTED" not in str(req.failure) else None
                    ),
                )
                page.on("response", lambda r: failed.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)

                # The landing page: the title, the two commands, and a navigation holding every page.
                response = page.goto(base + "/", wait_until="load")
                assert response is not None and response.status == 200
                assert "kdsearch" in page.title()
                assert page.locator("article h1").first.inner_text().strip().rstrip("¶") == "kdsearch"
                assert page.get_by_text("make run", exact=False).first.is_visible()
                links = page.eval_on_selector_all(
                    "nav.md-nav--primary a.md-nav__link[href]", "links => links.map(a => a.href)"
                )
                internal = sorted({urldefrag(h)[0] for h in links if urlparse(h).netloc == urlparse(base).netloc})
                paths = {urlparse(h).path for h in internal}
                missing = [p for p in expected if p not in paths]
                assert not missing, f"the navigation lacks {missing}; it has {sorted(paths)}"

                # The study-file reference: a known field's row is rendered as a table row and visible.
                page.goto(base + "/reference/study-file/", wait_until="load")
                row = page.locator("article table tr", has=page.locator(f"code:text-is('{KNOWN_FIELD}')"))
                assert row.count() == 1, f"no table row for {KNOWN_FIELD}"
                row.first.scroll_into_view_if_needed()
                assert row.first.is_visible()
                assert len(row.first.locator("td").all()) == 5  # field, type, default, allowed, description
                assert page.locator("article h2", has_text="[runtime]").count() == 1

                # Every internal link of the navigation loads, with an h1.
                for url in internal:
                    response = page.goto(url, wait_until="load")
                    assert response is not None and response.status == 200, (
                        f"{url}: HTTP {response and response.status}"
                    )
                    assert page.locator("article h1").count() >= 1, f"{url} has no heading"
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    assert not page_errors, f"script errors: {page_errors}"
    assert not console_errors, f"console errors: {console_errors}"
    assert not failed, f"failed requests (the site must work offline): {failed}"
