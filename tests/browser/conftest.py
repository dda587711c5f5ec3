"""
Fixtures for the browser tests: one Chromium for the session (Debian's, driven
by Playwright; never `playwright install`), a fresh page per test, and daphne
on a port of the test's choosing so that it can be restarted in place.
"""
import os
from pathlib import Path

import pytest

from tests.processes import free_port

CHROMIUM = os.environ.get("VANILLA_CHROMIUM", "/usr/bin/chromium")
# Chromium as root, with no network beyond loopback, and nothing in the
# background reaching for hosts it cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser(transactional_db):
    """
    Debian's Chromium, headless, for one test.

    Playwright's sync API runs an event loop in this thread while it is
    started, and Django refuses database calls while a loop runs. So the
    browser is the test's own and goes before the database is flushed; a test
    that touches the ORM after opening a page does it in another thread.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium, "
            "or set VANILLA_CHROMIUM",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page of its own context; its console errors are printed on failure."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.console = []
    page.on("console", lambda message: page.console.append(message.text))
    page.on("pageerror", lambda error: page.console.append(f"pageerror: {error}"))
    yield page
    print("\n".join(f"console: {line}" for line in page.console[-40:]))
    context.close()


def start_daphne(processes, port, name="daphne", timeout=30):
    """daphne on ``port``, stopped with the test's other processes."""
    return processes.daphne(name, timeout=timeout, port=port)


@pytest.fixture
def fixed_port():
    return free_port()
