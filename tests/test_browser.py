"""The report pages in a real browser: headless Chromium, driven by Selenium through chromedriver.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when it runs as root);
where they are missing the tests are skipped with that reason. Each page is opened from disk (no
server, no network): every image must have loaded, the compare page's slider and menus must change
what is shown, and a screenshot must not be blank.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_image
from PIL import Image

from cca_codec.cli import cli
from cca_codec.core.checkpoint import in_memory_model
from cca_codec.measure import classical
from cca_codec.measure import compare as cmp

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model():
    return in_memory_model("cca-tiny", model_id="browser-tiny")


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def images_on_page(driver) -> list[tuple[str, bool, int]]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src').slice(0, 60), i.complete, i.naturalWidth]);"
    )


def not_blank(png: bytes) -> bool:
    """A screenshot shows something: many colours, and not one flat field."""
    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB"))
    return len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50 and float(rgb.std()) > 10


def test_compare_page_loads_and_its_slider_and_menus_work(browser, tmp_path, model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    image = write_image(tmp_path, 120, 176, name="a.png")
    codecs = classical.resolve(["jpeg", "webp"])
    [report] = cmp.compare_images([image], tmp_path / "report", model, codecs, quality=2, device="cpu")
    open_page(browser, tmp_path / "report" / "index.html")
    loaded = images_on_page(browser)
    assert len(loaded) == 2 + 2 * len(report.regions) * 4  # the viewer's two, and 4 versions x (1:1 + zoom) per region
    assert all(complete and width > 0 for _, complete, width in loaded), loaded

    viewer = browser.find_element(By.CSS_SELECTOR, "[data-viewer]")
    over = viewer.find_element(By.CSS_SELECTOR, "img.over")
    stage = viewer.find_element(By.CSS_SELECTOR, ".stage")
    clip = lambda: browser.execute_script("return getComputedStyle(arguments[0]).clipPath;", over)  # noqa: E731
    assert clip() == "inset(0px 0px 0px 50%)"
    before = stage.screenshot_as_png
    viewer.find_element(By.CSS_SELECTOR, "input.split").send_keys(Keys.HOME)  # split at the left edge: all 'right'
    assert clip() == "inset(0px 0px 0px 0%)"
    assert stage.screenshot_as_png != before  # the picture changed with the slider

    right = Select(viewer.find_element(By.CSS_SELECTOR, "select.pick-right"))
    right.select_by_visible_text("jpeg-444-pillow")
    assert over.get_attribute("src").endswith("a/jpeg.png")
    viewer.find_element(By.CSS_SELECTOR, "button.swap").click()
    assert viewer.find_element(By.CSS_SELECTOR, "img.under").get_attribute("src").endswith("a/jpeg.png")
    assert over.get_attribute("src").endswith("a/original.png")
    assert browser.execute_script("return arguments[0].naturalWidth", over) == 176

    table = browser.find_element(By.CSS_SELECTOR, "table.measures").text
    assert "ccacodec browser-tiny" in table and "jpeg-444-pillow" in table and "webp-pillow" in table
    assert not_blank(browser.get_screenshot_as_png())


def test_eval_page_is_one_file_that_loads(browser, models_env, tmp_path):
    from selenium.webdriver.common.by import By

    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder, 96, 128, name="a.png")
    write_image(folder, 80, 80, name="b.png")
    page = tmp_path / "page" / "eval.html"
    result = CliRunner().invoke(cli, [
        "eval", str(folder), "--model", "test-tiny", "--qualities", "1,3,5", "--context", "grouped", "--compare", "jpeg",
        "--out", str(tmp_path / "out"), "--html", str(page), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    moved = tmp_path / "elsewhere.html"
    shutil.move(page, moved)  # one file: it needs nothing beside it
    open_page(browser, moved)
    loaded = images_on_page(browser)
    assert len(loaded) == 3 and all(src.startswith("data:image/png;base64,") for src, _, _ in loaded)
    assert all(complete and width > 0 for _, complete, width in loaded)
    plot = browser.find_element(By.CSS_SELECTOR, ".plot svg")
    assert plot.size["width"] > 200 and plot.size["height"] > 150
    assert "jpeg-444-pillow" in browser.find_element(By.TAG_NAME, "body").text
    assert not_blank(browser.get_screenshot_as_png())
