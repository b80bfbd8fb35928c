"""The documentation site: ``mkdocs build --strict`` passes, and in headless Chromium every
page loads without console errors, every figure is displayed and the search finds pages.

Marker ``docs`` needs the ``docs`` extra; marker ``browser`` also needs the system's
Chromium and its driver (Debian ``chromium``, ``chromium-driver``). Screenshots of three
pages go to ``$VGG_NP_DOCS_ARTEFACTS`` (default: ``vgg_np-docs`` in the temporary folder).
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "mkdocs" / "mkdocs.yml"
SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter",
                 "latex2mathml", "jupytext", "ipykernel")  # fmt: skip
SCREENSHOTS = ("index.html", "convolution.html", "notebooks/convolution.html")


def _missing(modules) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """Build the site once (notebooks executed) into a temporary folder.

    With ``VGG_NP_DOCS_SITE`` set (``.ci/run`` has just built it with ``--strict``), check
    that site instead of building it a second time.
    """
    missing = _missing(SITE_PACKAGES)
    if missing:
        pytest.skip(f"needs the `docs` extra (missing {', '.join(missing)})")
    if os.environ.get("VGG_NP_DOCS_SITE"):
        built = pathlib.Path(os.environ["VGG_NP_DOCS_SITE"])
        assert (built / "index.html").is_file(), f"VGG_NP_DOCS_SITE={built} holds no site"
        return built
    out = tmp_path_factory.mktemp("site")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return out


def _pages(site: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html") if p.name != "404.html")


@pytest.mark.docs
def test_strict_build_renders_pages_math_api_and_notebooks(site):
    pages = _pages(site)
    for page in ("index.html", "convolution.html", "training.html", "vectors.html",
                 "api/ops.html", "notebooks/gradients.html"):  # fmt: skip
        assert page in pages
    convolution = (site / "convolution.html").read_text()
    assert convolution.count("<math") >= 5 and "arithmatex" not in convolution
    from vgg_np import ops

    api = (site / "api" / "ops.html").read_text()
    assert all(f'id="vgg_np.ops.{name}"' in api for name in ops.__all__)
    for notebook in ("convolution", "vgg16_layers", "gradients"):
        html = (site / "notebooks" / f"{notebook}.html").read_text()
        assert html.count('src="data:image/png;base64,') >= 2, f"{notebook}: no figures drawn"
        assert "Traceback" not in html, f"{notebook}: an error was rendered"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would flood the test log
        pass


@pytest.fixture(scope="module")
def browser(site):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("needs Chromium and its driver (apt-get install chromium chromium-driver)")
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    driver.set_page_load_timeout(60)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    yield driver, base
    driver.quit()
    server.shutdown()


def _load(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(img => img.complete)"
        )
    )


@pytest.mark.browser
def test_every_page_loads_without_console_errors_and_shows_its_figures(site, browser):
    driver, base = browser
    errors, figures = [], 0
    in_html = sum((site / page).read_text().count("<img") for page in _pages(site))
    driver.get_log("browser")  # start empty
    for page in _pages(site):
        _load(driver, base + page)
        errors += [f"{page}: {e['message']}" for e in driver.get_log("browser")
                   if e["level"] == "SEVERE"]  # fmt: skip
        sizes = driver.execute_script(
            "return Array.from(document.images).map(i => [i.src.slice(0, 60), i.naturalWidth,"
            " i.naturalHeight])"
        )
        figures += len(sizes)
        errors += [f"{page}: figure {src} not displayed" for src, w, h in sizes if w * h == 0]
    print(f"{len(_pages(site))} pages, {figures} figures checked")
    assert figures == in_html >= 16, f"the browser saw {figures} of the {in_html} figures"
    assert not errors, "\n".join(errors)


@pytest.mark.browser
def test_search_finds_the_convolution_page(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, base = browser
    _load(driver, base + "index.html")
    box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.click()
    box.send_keys("im2col")
    results = WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
    )
    links = [r.get_attribute("href") for r in results]
    assert any("convolution.html" in link for link in links), links


@pytest.mark.browser
def test_screenshots_of_three_pages(browser):
    driver, base = browser
    folder = pathlib.Path(
        os.environ.get("VGG_NP_DOCS_ARTEFACTS", pathlib.Path(tempfile.gettempdir()) / "vgg_np-docs")
    )
    folder.mkdir(parents=True, exist_ok=True)
    for page in SCREENSHOTS:
        _load(driver, base + page)
        target = folder / (page.replace("/", "_").removesuffix(".html") + ".png")
        assert driver.save_screenshot(str(target)) and target.stat().st_size > 10_000
    print(f"screenshots in {folder}")
