"""The Gradio Space: bad input gets a clear message, and a real browser sees overlays and predictions."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEIT_TINY

SPACE = Path(__file__).resolve().parents[1] / "space"
sys.path.insert(0, str(SPACE))
gr = pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[test]')")
import app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


def test_grayscale_rgba_and_16bit_images_become_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8)).save(rgba)  # fully transparent black
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(deep)
    assert app.read_image(str(gray)).getpixel((0, 0)) == (128, 128, 128)
    assert app.read_image(str(rgba)).getpixel((0, 0)) == (255, 255, 255)  # transparency over white
    assert app.read_image(str(deep)).getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white


@pytest.mark.parametrize("content, message", [(b"just some text", "is not an image"),
                                              (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not an image")])
def test_non_images_and_corrupt_files_get_a_clear_message(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(gr.Error, match=message):
        app.read_image(str(path))


def test_a_very_large_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a tiny limit stands in for a huge image
    path = tmp_path / "large.png"
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(path)
    with pytest.raises(gr.Error, match="too large"):
        app.read_image(str(path))


def test_bad_settings_get_a_clear_message(deit_tiny):
    image = app.example_images()[0]
    with pytest.raises(gr.Error, match="reduction layers"):
        app.analyse(image, str(deit_tiny), "freq", 0.7, "three", "2,1,1")
    with pytest.raises(gr.Error, match="dc_window_sizes"):
        app.analyse(image, str(deit_tiny), "freq", 0.7, "3,6,9", "2,1")
    with pytest.raises(gr.Error, match="Cannot load the model"):
        app.analyse(image, "/nonexistent/model", "freq", 0.7, "3,6,9", "2,1,1")


def test_models_load_once(deit_tiny):
    image = app.example_images()[1]
    app.analyse(image, str(deit_tiny), "topk", 0.5, "3,6,9", "2,1,1")
    loads = app.load_unreduced.cache_info().misses
    overlays, reduced, unreduced, stats, _ = app.analyse(image, str(deit_tiny), "freq", 0.5, "3,6,9", "2,1,1")
    assert app.load_unreduced.cache_info().misses == loads  # another setting, no reload
    assert len(overlays) == 3 and len(reduced) == 5 and len(unreduced) == 5 and "GMACs" in stats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running_space(deit_tiny, tmp_path):
    port = free_port()
    env = os.environ | {"FREQTR_MODEL": str(deit_tiny), "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
                        "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "space.log", "w")
    process = subprocess.Popen([sys.executable, str(SPACE / "app.py")], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"the Space exited: {(tmp_path / 'space.log').read_text()[-2000:]}")
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("the Space did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="browser test: Debian's chromium is absent (apt-get install chromium)")
def test_in_a_real_browser(running_space, tmp_path):
    # FREQTR_SCREENSHOT=docs/space.png refreshes the README's picture
    screenshot = Path(os.environ.get("FREQTR_SCREENSHOT", tmp_path / "space.png"))
    playwright = pytest.importorskip("playwright.sync_api", reason="browser test: pip install playwright")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(running_space)
        page.locator("#image-upload input[type=file]").set_input_files(app.example_images()[0])
        page.locator("#run").click()
        page.locator("#stages img").nth(2).wait_for(timeout=120_000)  # one overlay per reduction stage
        page.get_by_text("Egyptian cat").first.wait_for(timeout=30_000)
        assert page.locator("#stages img").count() >= 3
        assert "tabby" in page.locator("#reduced-top5").inner_text().lower()
        assert "GMACs" in page.locator("#stats").inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000
