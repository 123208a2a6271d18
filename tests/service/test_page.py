"""The team's web page in a real headless Chromium (Debian's, driven by Playwright): sign in with a token,
see the job in the list, open it, watch it finish, see its loss curve and the model link; a wrong token is
refused on the page. `.ci/run` installs chromium when it is missing."""
from __future__ import annotations

import shutil

import pytest

from tests.service.test_api import sst2_tsv, tiny_job_spec, upload

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def test_a_team_signs_in_and_watches_its_job_finish(running_api, browser, tmp_path):
    client = running_api.team("web")
    token = client.headers["Authorization"].removeprefix("Bearer ")
    files = [upload(client, name, sst2_tsv(first, count)).json()["id"]
             for name, first, count in (("train.tsv", 0, 160), ("dev.tsv", 1000, 64))]
    job_id = client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files, epochs=2)}).json()["id"]

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(running_api.url)
    page.fill("#token", "tls_not-a-token")
    page.click("#login button")
    page.wait_for_selector("#login-error:has-text('API token')")

    page.fill("#token", token)
    page.click("#login button")
    page.wait_for_selector(f"tr[data-job='{job_id}']")
    assert page.locator("#usage").inner_text().endswith("of 1000 compute-hours this month")
    assert page.locator("#who").inner_text().startswith("web ·")
    page.click(f"a[href='#/jobs/{job_id}']")
    page.wait_for_selector("#status:has-text('succeeded')", timeout=240_000)
    assert page.locator("#curve path").count() == 1  # the loss curve, drawn from the run's rows
    assert page.locator("#model").inner_text().startswith("Download the model")
    assert "evaluation" in page.locator("pre.events").inner_text()
    shot = tmp_path / "job.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
