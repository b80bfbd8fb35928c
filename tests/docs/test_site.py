"""The documentation site: ``mkdocs build --strict`` passes, formulas keep their asterisks,
the naive kernels' code is on the pages that explain them, links read as titles, and in
headless Chromium every page loads without console errors, every figure is displayed, the
search finds pages, the convolution page shows ``(KH*KW*C, O)`` and the loops of
``conv2d_naive``, and the home page its install command and quick start.

Marker ``docs`` needs the ``docs`` extra; marker ``browser`` also needs the system's
Chromium and its driver (Debian ``chromium``, ``chromium-driver``). Screenshots go to
``$VGG_NP_DOCS_ARTEFACTS`` (default: ``vgg_np-docs`` in the temporary folder).
"""

from __future__ import annotations

import functools
import html
import http.server
import importlib.util
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.conftest import ROOT

CONFIG = ROOT / "docs" / "mkdocs" / "mkdocs.yml"
SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter",
                 "latex2mathml", "jupytext", "ipykernel")  # fmt: skip
SCREENSHOTS = ("index.html", "convolution.html", "notebooks/convolution.html")
# Code, math and the code-copy buttons' text: everything else on a page is prose.
NOT_PROSE = re.compile(
    r'<(code|pre|math|script|style|textarea)\b.*?</\1>|<div class="clipboard-copy-txt".*?</div>',
    re.S,
)
# "KH*KW*C" read by Markdown as "KH", then "KW" in italics, then "C".
EMPHASIS_IN_A_WORD = re.compile(r"[\w)\]]<em>|</em>[\w(\[]")


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


def _text(page_html: str) -> str:
    """The characters a reader sees, tags dropped (syntax highlighting splits code in spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page_html))


def _code_lines(function) -> list[str]:
    """The lines of `function`'s code as the package holds it: signature and body, no docstring."""
    head, _, rest = inspect.getsource(function).partition('"""')
    body = rest.partition('"""')[2]
    return [line.strip() for line in (head + body).splitlines() if line.strip()]


def _kernels() -> dict[str, object]:
    """Every loop definition of the kernels and their gradients, and im2col."""
    from vgg_np import backward, ops

    kernels = {name: getattr(module, name) for module in (ops, backward)
               for name in module.__all__ if name.endswith("_naive")}  # fmt: skip
    return {**kernels, "im2col": ops.im2col}


def _artefacts() -> pathlib.Path:
    default = pathlib.Path(tempfile.gettempdir()) / "vgg_np-docs"
    folder = pathlib.Path(os.environ.get("VGG_NP_DOCS_ARTEFACTS", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.docs
def test_formulas_keep_their_asterisks_on_every_page(site):
    bad = []
    for page in _pages(site):
        raw = (site / page).read_text()
        bad += [f"{page}: italics inside a formula: {raw[m.start() - 30 : m.end() + 30]!r}"
                for m in EMPHASIS_IN_A_WORD.finditer(raw)]  # fmt: skip
        prose = _text(NOT_PROSE.sub(" ", raw))
        bad += [f"{page}: a formula outside code or math: {prose[m.start() - 30 : m.end() + 30]!r}"
                for m in re.finditer(r"\*", prose)]  # fmt: skip
    assert not bad, "\n".join(bad)
    convolution = _text((site / "convolution.html").read_text())
    for formula in ("(KH*KW*C, O)", "KH*KW = 9", "224*224", "KH*KW*C = 8"):
        assert formula in convolution, formula


@pytest.mark.docs
def test_every_naive_kernel_is_shown_with_its_code_beside_its_explanation(site):
    # The explanations: every page but the API reference, which shows all code folded.
    pages = {page: _text((site / page).read_text()) for page in _pages(site)
             if not page.startswith("api/")}  # fmt: skip
    missing = [name for name, function in _kernels().items()
               if not any(all(line in text for line in _code_lines(function))
                          for text in pages.values())]  # fmt: skip
    assert not missing, f"no page shows the code of {', '.join(missing)}"


@pytest.mark.docs
def test_source_lines_show_the_code_as_the_package_holds_it_or_fail_the_build():
    pytest.importorskip("latex2mathml", reason="needs the `docs` extra")
    spec = importlib.util.spec_from_file_location("vgg_np_site_hooks", CONFIG.parent / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    from vgg_np import ops

    page = hooks.on_page_markdown(
        "Before.\n\n<!-- source: vgg_np/ops/activations.py relu -->\n\nAfter.\n"
    )
    line = inspect.getsourcelines(ops.relu)[1]
    title = f"vgg_np/ops/activations.py, line {line}: relu (docstring left out)"
    assert f'```python title="{title}"' in page
    assert all(code in page for code in _code_lines(ops.relu)) and '"""' not in page
    assert page.startswith("Before.") and page.endswith("After.\n")
    with pytest.raises(
        ValueError, match=r"vgg_np/ops/conv\.py has no top-level function 'conv2d_loops'"
    ):
        hooks.on_page_markdown("<!-- source: vgg_np/ops/conv.py conv2d_loops -->\n")


@pytest.mark.docs
def test_links_read_as_titles_not_file_names(site):
    bad = []
    for page in _pages(site):
        for text in re.findall(r"<a\b[^>]*>(.*?)</a>", (site / page).read_text(), re.S):
            text = _text(text).strip()
            if re.fullmatch(r"[\w./-]+\.(md|py|html|ipynb)", text):
                bad.append(f"{page}: a link reads {text!r}")
    assert not bad, "\n".join(bad)


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
    folder = _artefacts()
    for page in SCREENSHOTS:
        _load(driver, base + page)
        target = folder / (page.replace("/", "_").removesuffix(".html") + ".png")
        assert driver.save_screenshot(str(target)) and target.stat().st_size > 10_000
    print(f"screenshots in {folder}")


def _visible_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _screenshot(driver, element, name: str) -> None:
    """Save the window with `element` at its top, just below the site's fixed header."""
    driver.execute_script(
        "arguments[0].scrollIntoView(); window.scrollBy(0, -document.querySelector("
        "'header').offsetHeight - 16)",
        element,
    )
    time.sleep(0.5)  # the header's title fades from the site's name to the page's, 0.25 s
    target = _artefacts() / name
    assert driver.save_screenshot(str(target)) and target.stat().st_size > 10_000


@pytest.mark.browser
def test_convolution_page_shows_the_formula_with_its_asterisks(browser):
    from selenium.webdriver.common.by import By

    driver, base = browser
    _load(driver, base + "convolution.html")
    text = _visible_text(driver)
    assert "(KH*KW*C, O)" in text and "KHKWC" not in text
    formula = driver.find_element(By.XPATH, "//p[code[text()='(KH*KW*C, O)']]")
    assert formula.is_displayed()
    _screenshot(driver, formula, "convolution_formula.png")


@pytest.mark.browser
@pytest.mark.parametrize("page, kernel", [("convolution.html", "conv2d_naive"),
    ("convolution.html", "im2col"), ("kernels.html", "max_pool2d_naive"),
    ("training.html", "conv2d_backward_naive")])  # fmt: skip
def test_naive_kernels_loops_are_shown_on_their_page(browser, page, kernel):
    from selenium.webdriver.common.by import By

    driver, base = browser
    _load(driver, base + page)
    text = _visible_text(driver)
    lines = _code_lines(_kernels()[kernel])
    loops = [line for line in lines if line.startswith(("for ", "return "))]
    assert loops and all(line in text for line in loops), f"{page} does not show {kernel}'s code"
    block = driver.find_element(
        By.XPATH, f"//span[@class='filename'][contains(., ': {kernel} ')]/ancestor::div[1]"
    )
    assert block.is_displayed() and all(line in block.text for line in lines)
    _screenshot(driver, block, f"{page.removesuffix('.html')}_{kernel}.png")


@pytest.mark.browser
def test_home_page_shows_install_quick_start_and_the_readers_paths(browser):
    from selenium.webdriver.common.by import By

    driver, base = browser
    _load(driver, base + "index.html")
    text = _visible_text(driver)
    for words in ("pip install .", "vgg-np demo", "Quick start", "vgg_np.VGG16(", "Learners",
                  "Verifiers", "CPU inference users"):  # fmt: skip
        assert words in text, f"the home page does not say {words!r}"
    quick_start = driver.find_element(By.XPATH, "//h2[starts-with(., 'Quick start')]")
    example = quick_start.find_element(By.XPATH, "following::pre[1]").text
    assert 0 < example.count(">>> ") <= 10, example
    links = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "article a") if a.text]
    assert "How a convolution becomes a matrix product" in links, links
    _screenshot(driver, quick_start, "index_quick_start.png")
