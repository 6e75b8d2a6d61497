"""The web page of ``vaekit serve`` in a real browser: Debian's Chromium, headless, driven by Playwright, against
uvicorn on a free loopback port.

It clicks "New samples", moves a latent slider, draws a stroke, clicks the latent map and interpolates between
two test images, and checks what the page shows after each. A screenshot goes to the test's tmp dir, and to
docs/serve_screenshot.png when VAEKIT_SCREENSHOT is set (for the README); VAEKIT_SCREENSHOT_RUN then names a run
directory to serve instead of the tiny digits model trained here (the README's picture is of MNIST).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

import vaekit
from vaekit import anomaly

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_screenshot.png"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[dev]'")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is missing: pip install -e '.[dev]'")

from vaekit.serve import create_app  # noqa: E402

from conftest import digits_config  # noqa: E402


def train_run(run: Path) -> Path:
    """A digits run with a stored anomaly threshold."""
    torch.manual_seed(0)
    result = vaekit.train(digits_config(), run)
    scores = anomaly.score(result.model, vaekit.load_data(result.config.data).val.x)
    value = anomaly.threshold_from(scores, contamination=0.05)
    anomaly.save_threshold(run, anomaly.Threshold(value, "elbo", 10, "contamination 0.05 of the val split"))
    return run


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """uvicorn serving a freshly trained digits run (or $VAEKIT_SCREENSHOT_RUN) in a background thread."""
    run = Path(os.environ.get("VAEKIT_SCREENSHOT_RUN") or train_run(tmp_path_factory.mktemp("run")))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this very socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run, n_examples=200), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1150},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def version(page, element_id: str) -> int:
    return int(page.get_attribute(f"#{element_id}", "data-version") or 0)


def wait_for_update(page, element_id: str, before: int) -> None:
    """Wait until the page has redrawn the element once more. (Playwright's ``expect`` runs in its own script
    world: ``wait_for_function`` would evaluate a string in the page, which the page's CSP forbids.)"""
    sync_api.expect(page.locator(f"#{element_id}")).to_have_attribute("data-version", str(before + 1),
                                                                     timeout=15_000)


def sources(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.src)")


def test_page_in_chromium(server_url, page, tmp_path):
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.goto(server_url)
    sync_api.expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20_000)
    assert page.text_content("#status") == ""
    assert "latent " in page.text_content("#model-summary")

    # the sample grid, and "New samples" replaces it
    assert page.locator("#sample-grid img").count() == 16
    first = sources(page, "#sample-grid img")
    before = version(page, "sample-grid")
    page.click("#new-samples")
    wait_for_update(page, "sample-grid", before)
    assert sources(page, "#sample-grid img") != first

    # the decoded image sits beside the sliders, not below them leaving the card half empty
    sliders, image = page.locator("#latent-sliders").bounding_box(), page.locator("#latent-image").bounding_box()
    assert image["x"] >= sliders["x"] + sliders["width"] and image["y"] < sliders["y"] + sliders["height"]

    # a latent slider moved with the keyboard redraws the decoded image
    slider = page.locator(".latent-slider").first
    image_before, before = page.get_attribute("#latent-image", "src"), version(page, "latent-image")
    slider.focus()
    page.keyboard.press("End")  # to +3
    wait_for_update(page, "latent-image", before)
    sync_api.expect(slider).to_have_value("3")
    assert page.get_attribute("#latent-image", "src") != image_before

    # a stroke on the canvas gets a reconstruction, a score against the threshold and a heatmap; before it,
    # the empty reconstruction shows no broken-image icon
    visibility = 'e => getComputedStyle(e).visibility'
    assert page.eval_on_selector("#draw-recon", visibility) == "hidden"
    assert page.locator("#draw-recon").bounding_box()["height"] > 100  # its place is kept: nothing jumps later
    canvas = page.locator("#draw-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    before = version(page, "draw-score")
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    for t in range(1, 11):
        page.mouse.move(box["x"] + 0.5 * box["width"] + 2 * t, box["y"] + (0.2 + 0.06 * t) * box["height"])
    page.mouse.up()
    wait_for_update(page, "draw-score", before)
    assert math.isfinite(float(page.get_attribute("#draw-score", "data-score")))
    assert "anomaly score" in page.text_content("#draw-score")
    assert page.get_attribute("#draw-flag", "data-flag") in ("true", "false")
    assert "threshold" in page.text_content("#draw-flag")
    assert page.get_attribute("#draw-recon", "src").startswith("data:image/png;base64,")
    assert page.eval_on_selector("#draw-recon", visibility) == "visible"

    # the score selector offers this model's scores, the stored threshold's first; another score rescored
    methods = page.locator("#draw-method option").all_text_contents()
    assert methods == ["elbo", "nll", "recon", "kl"]  # one layer: no likelihood ratio
    before = version(page, "draw-score")
    page.select_option("#draw-method", "recon")
    wait_for_update(page, "draw-score", before)
    assert page.text_content("#draw-score").startswith("recon anomaly score")
    assert "No threshold" in page.text_content("#draw-flag")  # the stored threshold is for elbo

    # a click on the latent map decodes that point
    latent_map = page.locator("#latent-map")
    latent_map.scroll_into_view_if_needed()
    map_box = latent_map.bounding_box()
    before = version(page, "map-image")
    latent_map.click(position={"x": 0.4 * map_box["width"], "y": 0.6 * map_box["height"]})
    wait_for_update(page, "map-image", before)
    assert "decoded (" in page.text_content("#map-point")

    # interpolation between two test images
    page.locator("#example-strip img").nth(0).click()
    page.locator("#example-strip img").nth(3).click()
    before = version(page, "interp-strip")
    page.click("#interpolate")
    wait_for_update(page, "interp-strip", before)
    assert page.locator("#interp-strip img").count() == 10

    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("VAEKIT_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)
    assert page.text_content("#status") == ""
    assert not problems, problems
