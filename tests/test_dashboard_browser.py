"""The dashboard's pages in a real browser: headless Chromium driven by
selenium against a dev cluster's dashboard. A job shows up and moves live
(without a reload), a chunk's stdout opens, the cluster page shows the
masters and workers, and data that looks like HTML is shown as text and never
runs. Each page is saved as a screenshot in $UDS_TEST_ARTIFACTS.

Chromium and chromedriver are Debian's `chromium` and `chromium-driver`,
installed by `make test` (scripts/install-system-deps.sh); without them these
tests fail, they do not skip.
"""
from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

import pytest

from test_cli import uds
from uds import client

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
ARTIFACTS = pathlib.Path(os.environ.get("UDS_TEST_ARTIFACTS", "/tmp/uds-test-artifacts"))
WAIT_S = 30
WINDOW = (1280, 900)

# Each chunk sleeps a little, so that a job's progress is seen in between.
SLOW_CHUNKS = b"#!/bin/sh\nsleep 0.3\necho chunk $UDS_CHUNK of $UDS_CHUNKS\n"
SCRIPT = "<script>window.__xss=1</script>"
IMAGE = '<img src=x onerror="window.__xss=1">'
# An input name may not hold "/": the script tag is left open there.
OPEN_SCRIPT = "<script>window.__xss=1"
XSS_PROGRAM = ("#!/bin/sh\ncat <<'EOF'\n" + SCRIPT + "\n" + IMAGE + "\nEOF\n"
               "echo out > \"$UDS_OUTPUT/<img src=x onerror=window.__xss=1>\"\n").encode()


@dataclass(frozen=True)
class Dashboard:
    url: str                    # http://127.0.0.1:PORT/
    folder: pathlib.Path        # the dev cluster's folder

    def connect(self):
        return client.connect(self.folder)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard") / "dev"
    try:
        started = uds("dev", "--detach", "--workers", "2", "--slots", "2", "--dir", str(folder),
                      "--dashboard-port", "0")
        printed = started.stdout.decode()
        found = re.search(r"dashboard: (http://\S+/)", printed)
        assert found, f"uds dev printed no dashboard URL:\n{printed}"
        yield Dashboard(found.group(1), folder)
    finally:
        uds("dev", "--stop", "--dir", str(folder), check=False)
        from daemons import unmount_under
        unmount_under(folder)


@pytest.fixture(scope="module")
def browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: the browser tests need Debian's chromium and "
                    "chromium-driver, which `make test` installs (scripts/install-system-deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


# -- helpers ---------------------------------------------------------------------

def wait_for(driver, condition, what: str):
    """The first truthy value of condition(driver), polled; fails naming `what`."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, f"waited {WAIT_S} s for {what}")


def css(driver, selector: str):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def click(driver, selector: str) -> None:
    """Clicks the first element `selector` finds, again if a live update
    replaced it in between."""
    def clicked(d):
        found = css(d, selector)
        if not found:
            return False
        found[0].click()
        return True
    wait_for(driver, clicked, f"a click on {selector}")


def text_of(driver, selector: str) -> str:
    found = css(driver, selector)
    return found[0].get_attribute("textContent") if found else ""


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def bar_width(driver, job: str) -> float | None:
    """The progress bar's width in the job's row of the jobs page, in % (None: no row)."""
    return driver.execute_script(
        "const bar = document.querySelector(`tr.job-row[data-job='${arguments[0]}'] .progress-bar`);"
        "return bar ? parseFloat(bar.style.width) : null;", job)


def chunk_states(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#chunk-grid .chunk')].map((chunk) => chunk.dataset.state);")


def header_state(driver) -> str | None:
    found = css(driver, "#job-header")
    return found[0].get_attribute("data-state") if found else None


def open_page(driver, dashboard: Dashboard, path: str) -> None:
    """Loads the dashboard afresh at `path` and marks the document, so that a
    reload (which would drop the mark) is seen."""
    driver.get(dashboard.url.rstrip("/") + path)
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")
    driver.execute_script("window.__marker = 1;")


def still_loaded(driver) -> bool:
    return driver.execute_script("return window.__marker") == 1


def script_errors(driver) -> list[dict]:
    """The console's errors since last asked, but for failed requests (a refused
    action's 403 is one): a script that threw, or anything the page's
    Content-Security-Policy blocked."""
    return [entry for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and entry.get("source") != "network"]


# -- tests -------------------------------------------------------------------------

def test_a_job_moves_live_and_its_logs_open(dashboard, browser):
    chunks = 16
    with dashboard.connect() as connection:
        open_page(browser, dashboard, "/jobs")
        wait_for(browser, lambda d: css(d, "#jobs-table tbody tr"), "the jobs table")
        listed = connection.submit_job(SLOW_CHUNKS, chunks=chunks, timeout=60, hold=True, name="listed-live")
        # The job appears while the page is open, at 0 %, and its bar grows after its release.
        wait_for(browser, lambda d: bar_width(d, listed.id) == 0, "the held job's row at 0 %")
        listed.release()
        seen = set()

        def grown(driver):
            seen.add(bar_width(driver, listed.id))
            return 100 in seen

        wait_for(browser, grown, "the job's progress bar to reach 100 %")
        assert any(width is not None and 0 < width < 100 for width in seen), seen
        assert still_loaded(browser)
        screenshot(browser, "dashboard-jobs.png")

        watched = connection.submit_job(SLOW_CHUNKS, chunks=chunks, timeout=60, hold=True, name="watched-live")
        wait_for(browser, lambda d: css(d, f"tr.job-row[data-job='{watched.id}'] a.job-name"), "the second job")
        click(browser, f"tr.job-row[data-job='{watched.id}'] a.job-name")
        wait_for(browser, lambda d: len(chunk_states(d)) == chunks, "the chunk grid")
        assert "succeeded" not in chunk_states(browser)
        watched.release()
        states_seen = set()

        def finished(driver):
            states = chunk_states(driver)
            states_seen.add(tuple(states))
            return states == ["succeeded"] * chunks

        wait_for(browser, finished, "every chunk of the grid to succeed")
        assert len(states_seen) > 2, states_seen          # it went through states in between
        assert still_loaded(browser)
        wait_for(browser, lambda d: header_state(d) == "succeeded", "the header to say succeeded")
        wait_for(browser, lambda d: css(d, "#task-stream rect.ts-bar"), "the task stream's bars")
        wait_for(browser, lambda d: "job_succeeded" in text_of(d, "#job-events"), "the job's events")

        click(browser, "#chunk-grid .chunk[data-index='7']")
        wait_for(browser, lambda d: css(d, "#chunk-panel .show-stdout:not([disabled])"), "chunk 7's stdout button")
        assert css(browser, "#chunk-panel .timeline .phase"), text_of(browser, "#chunk-panel")
        click(browser, "#chunk-panel .show-stdout")
        wait_for(browser, lambda d: text_of(d, "#log-view") == f"chunk 7 of {chunks}\n", "chunk 7's stdout")
        assert still_loaded(browser)
        screenshot(browser, "dashboard-job.png")

    click(browser, "#nav-cluster")
    wait_for(browser, lambda d: "leader" in text_of(d, "#masters tbody"), "the masters with a leader")
    wait_for(browser, lambda d: len(css(d, "#workers tbody tr")) == 2, "both workers")
    wait_for(browser, lambda d: watched.id[:8] in text_of(d, "#event-stream"), "the job's events in the stream")
    wait_for(browser, lambda d: css(d, "#rate-chart canvas"), "the chunks-per-second chart")
    assert still_loaded(browser)
    screenshot(browser, "dashboard-cluster.png")
    assert script_errors(browser) == []


def test_html_in_args_input_names_and_stdout_is_shown_as_text(dashboard, browser):
    with dashboard.connect() as connection:
        job = connection.submit_job(XSS_PROGRAM, args=[SCRIPT, IMAGE], name=SCRIPT, timeout=60,
                                    inputs={IMAGE: b"image\n", OPEN_SCRIPT: b"script\n"})
        assert job.wait(timeout=60).state == "succeeded"
    open_page(browser, dashboard, "/jobs")
    wait_for(browser, lambda d: css(d, f"tr.job-row[data-job='{job.id}']"), "the job's row")
    assert SCRIPT in text_of(browser, f"tr.job-row[data-job='{job.id}'] a.job-name")
    click(browser, f"tr.job-row[data-job='{job.id}'] a.job-name")
    wait_for(browser, lambda d: SCRIPT in text_of(d, "#job-args"), "the args")
    assert IMAGE in text_of(browser, "#job-args")
    assert IMAGE in text_of(browser, "#job-inputs") and OPEN_SCRIPT in text_of(browser, "#job-inputs")
    assert SCRIPT in text_of(browser, "#job-header")
    wait_for(browser, lambda d: css(d, "#chunk-grid .chunk[data-index='0']"), "the chunk grid")
    click(browser, "#chunk-grid .chunk[data-index='0']")
    wait_for(browser, lambda d: css(d, "#chunk-panel a.output-download"), "the chunk's outputs")
    assert "<img src=x onerror=window.__xss=1>" in text_of(browser, "#chunk-panel a.output-download")
    click(browser, "#chunk-panel .show-stdout")
    wait_for(browser, lambda d: SCRIPT in text_of(d, "#log-view"), "the stdout")
    assert IMAGE in text_of(browser, "#log-view")
    click(browser, "#nav-cluster")
    wait_for(browser, lambda d: SCRIPT in text_of(d, "#event-stream"), "the job's name in the event stream")
    assert browser.execute_script("return window.__xss") is None
    # Nothing of the data became an element.
    assert browser.execute_script("return document.querySelectorAll('#page script, #page img').length") == 0
    assert still_loaded(browser)
    assert script_errors(browser) == []


def admin_token(dashboard: Dashboard) -> str:
    from uds.wire import cluster as cluster_file
    from uds.wire.enums import NodeRole
    from uds.wire.keys import open_role
    return open_role(cluster_file.load(dashboard.folder / "cluster.toml").keys, NodeRole.CLIENT).admin_token()


def test_release_asks_for_the_admin_token_and_says_why_it_was_refused(dashboard, browser):
    with dashboard.connect() as connection:
        held = connection.submit_job(b"#!/bin/sh\necho released\n", timeout=60, hold=True, name="held-for-release")
    open_page(browser, dashboard, f"/jobs/{held.id}")
    wait_for(browser, lambda d: header_state(d) == "held", "the held job's header")
    browser.execute_script("sessionStorage.clear(); window.prompt = () => 'not-the-token';")
    click(browser, "#release-job")
    wait_for(browser, lambda d: "refused" in text_of(d, "#action-message"), "the refusal")
    assert "token" in text_of(browser, "#action-message")     # the server's own reason
    assert browser.execute_script("return sessionStorage.length") == 0
    browser.execute_script("window.prompt = (question) => arguments[0];", admin_token(dashboard))
    click(browser, "#release-job")
    wait_for(browser, lambda d: header_state(d) == "succeeded", "the released job to succeed")
    assert text_of(browser, "#action-message") == ""
    assert still_loaded(browser)

    # The jobs page's filters: by state, and a since the server cannot read.
    click(browser, "#nav-jobs")
    wait_for(browser, lambda d: css(d, f"tr.job-row[data-job='{held.id}']"), "the jobs list")
    from selenium.webdriver.support.ui import Select
    Select(css(browser, "#filter-state")[0]).select_by_value("held")
    wait_for(browser, lambda d: not css(d, "tr.job-row"), "no held job left in the list")
    Select(css(browser, "#filter-state")[0]).select_by_value("succeeded")
    wait_for(browser, lambda d: css(d, f"tr.job-row[data-job='{held.id}']"), "the succeeded jobs")
    assert {row.get_attribute("data-state") for row in css(browser, "tr.job-row")} == {"succeeded"}
    since = css(browser, "#filter-since")[0]
    since.send_keys("lots")
    click(browser, ".filters button[type=submit]")
    wait_for(browser, lambda d: "since" in text_of(d, "#jobs-message"), "the server's word on the since")
    assert still_loaded(browser)
    assert script_errors(browser) == []
