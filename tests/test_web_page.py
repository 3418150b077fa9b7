"""The web page in a real browser: Debian's chromium, headless, driven through chromedriver.

The real server (`python setup.py --config <tmp>`, real workers and models) runs in a subprocess
on a free loopback port, with an API token so the page's token handling is exercised too, and
with a filename root in the tmp folder holding copies of the receipt for folder jobs. The
browser reads docs/samples/receipt.jpg, and a 2-page PDF made from it, through the page's file
input, and runs folder and ZIP jobs in the Jobs tab; what the page shows is compared with what
the API answers for the same input. Screenshots land in the test's tmp_path (wide light, wide
dark, narrow).

The browser is installed by `make test` (apt-get, pinned). Without it these tests fail: a
browser test that skips itself reads as a pass.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from server.handlers.jobs import CSV_COLUMNS
from server.testing import free_port, process_tree
from tests.app_testing import PINNED_BACKEND
from tests.pdfs import images_pdf, text_pdf, tiff_bytes

ROOT = Path(__file__).resolve().parent.parent
RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run")
WIDE, NARROW = (1440, 900), (390, 844)
BOOT_TIMEOUT = 240
WAIT = 60
CORRUPT = b"\xff\xd8\xff\xe0 this is not really a JPEG " * 20


# ---------------------------------------------------------------- the server

class Server:
    def __init__(self, process: subprocess.Popen, port: int, token: str,
                 log: list[str], roots: Path) -> None:
        self.process, self.port, self.token, self.log = process, port, token, log
        self.roots = roots  # the one filename root: folder jobs read from here
        self.url = f"http://127.0.0.1:{port}/"

    def workers(self) -> list[psutil.Process]:
        return [proc for role, proc in process_tree(self.process.pid) if role == "worker"]

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, auth: bool = True) -> http.client.HTTPResponse:
        """A raw request (the path is sent exactly as given, never normalised)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.body = response.read()
        connection.close()
        return response

    def ocr(self, image: bytes) -> tuple[int, dict]:
        body = json.dumps({"file_type": "base64", "img_src": base64.b64encode(image).decode()})
        response = self.request("POST", "/ocr_service", body.encode(),
                                {"Content-Type": "application/json"})
        return response.status, json.loads(response.body)

    def get_json(self, path: str) -> dict:
        response = self.request("GET", path)
        assert response.status == 200, (path, response.status, response.body[:300])
        return json.loads(response.body)


def receipt_variant(quality: int) -> bytes:
    """The receipt saved again as a JPEG of `quality`: the same text, other bytes (so it is
    not in the result cache)."""
    out = io.BytesIO()
    Image.open(RECEIPT).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_roots(folder: Path) -> Path:
    """The filename root: receipts/ holds two exact copies of the receipt and two re-encoded
    ones (a sub-folder holds one of them); many/ holds twelve re-encoded ones, enough to
    still be running when the page cancels the job."""
    roots = folder / "roots"
    receipts = roots / "receipts"
    (receipts / "more").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (receipts / name).write_bytes(RECEIPT.read_bytes())
    (receipts / "c.jpg").write_bytes(receipt_variant(90))
    (receipts / "more" / "d.jpg").write_bytes(receipt_variant(85))
    many = roots / "many"
    many.mkdir()
    for k in range(12):
        (many / f"{k:02d}.jpg").write_bytes(receipt_variant(80 - k))
    return roots


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("web-server")
    token = secrets.token_urlsafe(24)
    config = json.loads((ROOT / "config.json").read_text())
    config["web_server"].update(address="127.0.0.1", api_token=token)
    # The jobs test holds the worker (SIGSTOP) while it cancels a job: a held worker must not
    # be killed or count as not ready meanwhile.
    config["ocr"]["process"].update(number=1, threads=1, ping_interval=600, ping_timeout=600)
    config["ocr"]["predict_system"]["models_dir"] = str(ROOT / "models")
    config["ocr"]["predict_system"]["backend"] = PINNED_BACKEND["ocr.predict_system.backend"]
    roots = make_roots(folder)
    config["service"]["filename_roots"] = [str(roots)]
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(config))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "setup.py", "--config", str(config_file), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    log: list[str] = []

    def pump() -> None:  # keeps the pipe drained for the server's whole life
        for line in process.stderr:
            log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        # The launcher logs "listening" only after its workers have booted.
        while True:
            line = lines.get(timeout=BOOT_TIMEOUT)
            if line is None:
                pytest.fail("the server exited before listening:\n" + "".join(log[-40:]))
            if "ppocr-server listening" in line:
                break
        yield Server(process, port, token, log, roots)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the browser test needs Debian's chromium "
                    "and chromium-driver (`make test` installs the pinned versions)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={WIDE[0]},{WIDE[1]}")
    options.add_argument("--lang=en-GB")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: webdriver.Chrome, server: Server, *, token: str | None,
              size: tuple[int, int] = WIDE, dark: bool = False) -> None:
    driver.set_window_size(*size)
    # The viewport exactly `size`; a narrow one as a phone's (overlay scrollbars, no window).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size == NARROW})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
    driver.get(server.url)
    driver.execute_script("localStorage.clear()")
    if token is not None:
        driver.execute_script("localStorage.setItem('ppocr-server.api-token', arguments[0])",
                              token)
    driver.get(server.url)
    # The settings request has answered (with the token: the model list; without: a note).
    wait(driver).until(lambda d: d.find_element(By.ID, "opt-model").text != "loading…")


def script_errors(driver: webdriver.Chrome) -> list[str]:
    """The console's errors since the last call, but for the API's own refusals (an HTTP
    error answer is logged as "Failed to load resource"): script errors, CSP refusals."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]


def wait(driver: webdriver.Chrome, timeout: float = WAIT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,))


def choose_file(driver: webdriver.Chrome, path: Path) -> None:
    driver.find_element(By.ID, "file-input").send_keys(str(path))


def wait_for_lines(driver: webdriver.Chrome) -> list[WebElement]:
    wait(driver).until(lambda d: d.find_element(By.ID, "chips").get_attribute("hidden") is None
                       and d.find_element(By.ID, "busy").get_attribute("hidden") is not None)
    return driver.find_elements(By.CSS_SELECTOR, "#lines .line")


def wait_for_download(driver: webdriver.Chrome, path: Path) -> Path:
    wait(driver).until(lambda d: path.is_file() and path.stat().st_size > 0)
    return path


def shown_lines(driver: webdriver.Chrome) -> list[str]:
    return [item.find_element(By.CLASS_NAME, "line-text").text
            for item in driver.find_elements(By.CSS_SELECTOR, "#lines .line")]


def screenshot(driver: webdriver.Chrome, path: Path, full_page: bool = False) -> Path:
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": full_page})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def rect(driver: webdriver.Chrome, element: WebElement) -> dict:
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return {x: r.x, y: r.y, width: r.width, height: r.height};", element)


def assert_boxes_on_the_image(driver: webdriver.Chrome, api: dict) -> None:
    """The overlay covers the image exactly and each box sits where its pixels are."""
    picture = driver.find_element(By.ID, "picture")
    overlay = driver.find_element(By.ID, "overlay")
    image, drawn = rect(driver, picture), rect(driver, overlay)
    for side in ("x", "y", "width", "height"):
        assert abs(image[side] - drawn[side]) < 1, (side, image, drawn)
    scale = image["width"] / api["width"]
    assert abs(image["height"] / api["height"] - scale) < 0.01
    polygons = driver.find_elements(By.CSS_SELECTOR, "#overlay polygon.box")
    for polygon, line in zip(polygons, api["lines"]):
        box = rect(driver, polygon)
        xs = [x for x, _ in line["box"]]
        ys = [y for _, y in line["box"]]
        assert abs(box["x"] - (image["x"] + min(xs) * scale)) < 1.5
        assert abs(box["y"] - (image["y"] + min(ys) * scale)) < 1.5
        assert abs(box["width"] - (max(xs) - min(xs)) * scale) < 1.5


# ---------------------------------------------------------------- the page's files over HTTP

def test_page_and_files_are_served_with_their_types_and_caching(server: Server):
    page = server.request("GET", "/", auth=False)
    assert page.status == 200
    assert page.getheader("Content-Type") == "text/html; charset=utf-8"
    assert page.getheader("Cache-Control") == "no-cache"
    assert "script-src 'self'" in page.getheader("Content-Security-Policy")
    assert page.getheader("X-Content-Type-Options") == "nosniff"
    html = page.body.decode()
    references = dict(re.findall(r'"static/([\w.-]+)\?v=([0-9a-f]{16})"', html))
    assert {"app.js", "style.css", "favicon.svg"} <= set(references)
    assert server.request("GET", "/", headers={"If-None-Match": page.getheader("ETag")},
                          auth=False).status == 304
    types = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
             "favicon.svg": "image/svg+xml"}
    for name, content_type in types.items():
        current = server.request("GET", f"/static/{name}?v={references[name]}", auth=False)
        assert current.status == 200 and current.getheader("Content-Type") == content_type
        assert current.getheader("Cache-Control") == "public, max-age=31536000, immutable"
        assert current.body == (ROOT / "server" / "static" / name).read_bytes()
        unversioned = server.request("GET", f"/static/{name}", auth=False)
        assert unversioned.status == 200 and unversioned.getheader("Cache-Control") == "no-cache"
        assert server.request("GET", f"/static/{name}", auth=False, headers={
            "If-None-Match": current.getheader("ETag")}).status == 304
        head = server.request("HEAD", f"/static/{name}", auth=False)
        assert head.status == 200 and head.body == b""
        assert int(head.getheader("Content-Length")) == len(current.body)
    # Only the page's own files, by name: no listing, no way out of the folder. (With the
    # token: a path no route takes is the API's 401 without it.)
    for path in ("/static/", "/static", "/static/../config.json", "/static/..%2fconfig.json",
                 "/static/%2e%2e/%2e%2e/config.json", "/static/..%2F..%2Fconfig.json",
                 "/static/nope.js", "/static/index.html", "/static/.hidden",
                 "/static/%2fetc%2fpasswd", "/server/static/app.js", "/index.html"):
        response = server.request("GET", path)
        assert response.status == 404, path
        assert json.loads(response.body)["error"]["code"] == "not_found", path
    assert server.request("POST", "/", b"x", auth=False).status == 405
    # The page is public; what it learns about the server needs the token.
    refused = server.request("GET", "/web/settings", auth=False)
    assert refused.status == 401 and json.loads(refused.body)["error"]["code"] == "unauthorized"
    settings = json.loads(server.request("GET", "/web/settings").body)
    assert settings["models"] == ["ppocr-v4"] and settings["default_model"] == "ppocr-v4"
    options = {option["name"]: option for option in settings["options"]}
    # The server's defaults: the page preset's (config.json names it).
    assert options["det_limit_side_len"]["default"] == 1280
    assert options["det_limit_type"]["default"] == "page"
    assert options["det_limit_type"]["enum"] == ["max", "min", "page"]
    assert options["drop_score"]["minimum"] == 0 and options["drop_score"]["maximum"] == 1
    documents = {option["name"]: option for option in settings["document_options"]}
    assert list(documents) == ["pages", "dpi", "pdf_text", "password"]
    assert documents["dpi"]["default"] == 200 and documents["pdf_text"]["enum"] == [
        "ocr", "auto", "only"]
    assert settings["jobs"]["enabled"] is True and settings["jobs"]["folders"] is True
    assert "*.pdf" in settings["jobs"]["default_patterns"]
    # Whether there are filename roots, never where they are.
    assert str(server.roots.parent) not in json.dumps(settings)


# ---------------------------------------------------------------- the page in the browser

def test_the_page_reads_the_receipt_like_the_api(server: Server, browser: webdriver.Chrome,
                                                 tmp_path: Path):
    open_page(browser, server, token=None)
    # No token yet: the page says so instead of failing quietly.
    assert browser.find_element(By.ID, "token-state").text == "API token needed"
    assert "needs an API token" in browser.find_element(By.ID, "settings-note").text
    screenshot(browser, tmp_path / "empty-wide.png")
    # Paste the token the way a person does, then read the receipt through the file input.
    browser.find_element(By.CSS_SELECTOR, "#token-panel summary").click()
    browser.find_element(By.ID, "token-input").send_keys(server.token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait(browser).until(lambda d: d.find_element(By.ID, "opt-model").is_enabled())
    assert browser.find_element(By.ID, "token-state").text == "API token saved"
    assert browser.execute_script(
        "return localStorage.getItem('ppocr-server.api-token')") == server.token
    assert browser.find_element(By.ID, "opt-det_limit_side_len").get_attribute("value") == "1280"
    choose_file(browser, RECEIPT)
    items = wait_for_lines(browser)

    status, api = server.ocr(RECEIPT.read_bytes())
    assert status == 200 and api["cached"] is True  # the page's own run filled the cache
    expected = [line["text"] for line in api["lines"]]
    assert len(expected) == 16
    assert shown_lines(browser) == expected
    assert len(items) == len(expected)
    polygons = browser.find_elements(By.CSS_SELECTOR, "#overlay polygon.box")
    assert len(polygons) == len(expected)  # one box per line, nothing else drawn
    for polygon, line in zip(polygons, api["lines"]):
        points = [[float(v) for v in point.split(",")]
                  for point in polygon.get_attribute("points").split()]
        assert points == [[float(v) for v in point] for point in line["box"]]
    chips = browser.find_element(By.ID, "chips").text
    assert "fresh run" in chips and "ppocr-v4" in chips and "500 × 500 px" in chips
    legend = browser.find_element(By.ID, "timings").text
    for stage in ("det", "cls", "rec", "total"):
        assert stage in legend
    assert "%" in items[0].find_element(By.CLASS_NAME, "line-score").text
    assert_boxes_on_the_image(browser, api)

    # Pointing at a line lights its box, and pointing at a box lights its line.
    ActionChains(browser).move_to_element(items[3]).perform()
    assert "active" in polygons[3].get_attribute("class")
    assert "active" in items[3].get_attribute("class")
    ActionChains(browser).move_to_element(polygons[7]).perform()
    assert "active" in items[7].get_attribute("class")
    assert "active" not in polygons[3].get_attribute("class")
    screenshot(browser, tmp_path / "result-wide.png")

    # Copy all text and download the JSON: what they hold is what the server answered.
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server.url.rstrip("/"),
        "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    # The toast's text, not its visible text: it fades after 1.8 s, which a slow poll can miss
    # (emptied first, so only this click can fill it).
    browser.execute_script("document.getElementById('toast').textContent = ''")
    browser.find_element(By.ID, "copy").click()
    wait(browser).until(lambda d: d.execute_script(
        "return document.getElementById('toast').textContent") == "Text copied")
    copied = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('ERR ' + e))")
    assert copied == api["text"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(downloads)})
    browser.find_element(By.ID, "download").click()
    saved = downloads / "receipt.ocr.json"
    wait(browser).until(lambda d: saved.is_file() and saved.stat().st_size > 0)
    downloaded = json.loads(saved.read_text())
    assert downloaded["lines"] == api["lines"] and downloaded["cached"] is False

    # Reading again is answered from the cache, and the page says so.
    browser.find_element(By.ID, "run").click()
    wait(browser).until(lambda d: "from the cache" in d.find_element(By.ID, "chips").text)
    assert shown_lines(browser) == expected

    # Dark, then a narrow window: the boxes still sit on their pixels.
    open_page(browser, server, token=server.token, dark=True)
    choose_file(browser, RECEIPT)
    wait_for_lines(browser)
    screenshot(browser, tmp_path / "result-wide-dark.png")
    open_page(browser, server, token=server.token, size=NARROW)
    choose_file(browser, RECEIPT)
    assert len(wait_for_lines(browser)) == len(expected)
    assert_boxes_on_the_image(browser, api)
    screenshot(browser, tmp_path / "result-narrow.png", full_page=True)
    # Actual size: the image at its own pixels (scrolling), the boxes scaled with it.
    browser.find_element(By.ID, "zoom-actual").click()
    assert rect(browser, browser.find_element(By.ID, "picture"))["width"] == api["width"]
    assert_boxes_on_the_image(browser, api)
    assert not any("Traceback" in line for line in server.log)
    assert script_errors(browser) == []


def test_dropped_and_pasted_images_are_read(server: Server, browser: webdriver.Chrome):
    # The events a drop and a paste fire, carrying the receipt as a File (a real drag or
    # clipboard cannot be driven headless).
    send = """
        const [kind, data] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "receipt.jpg", {type: "image/jpeg"}));
        if (kind === "drop") {
          for (const type of ["dragenter", "dragover", "drop"]) {
            window.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true,
                                                      cancelable: true}));
          }
        } else {
          document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer,
                                                              bubbles: true, cancelable: true}));
        }"""
    status, api = server.ocr(RECEIPT.read_bytes())
    assert status == 200
    expected = [line["text"] for line in api["lines"]]
    encoded = base64.b64encode(RECEIPT.read_bytes()).decode()
    for kind in ("drop", "paste"):
        open_page(browser, server, token=server.token)
        browser.execute_script(send, kind, encoded)
        assert len(wait_for_lines(browser)) == len(expected), kind
        assert shown_lines(browser) == expected, kind
        assert browser.find_element(By.ID, "drop-veil").get_attribute("hidden") is not None
        assert "receipt.jpg" in browser.find_element(By.ID, "file-name").text
    assert script_errors(browser) == []


def test_a_corrupt_file_shows_the_servers_error(server: Server, browser: webdriver.Chrome,
                                                tmp_path: Path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(CORRUPT)
    status, api = server.ocr(CORRUPT)
    assert status == 415 and api["error"]["code"] == "invalid_image"
    open_page(browser, server, token=server.token)
    choose_file(browser, corrupt)
    message = browser.find_element(By.ID, "message")
    wait(browser).until(lambda d: message.is_displayed())
    assert browser.find_element(By.ID, "message-title").text == "invalid_image · HTTP 415"
    assert api["error"]["message"] in browser.find_element(By.ID, "message-text").text
    assert browser.find_elements(By.CSS_SELECTOR, "#lines .line") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#overlay polygon") == []
    # Nothing the browser could show either: the drop zone is back for the next image.
    wait(browser).until(lambda d: d.find_element(By.ID, "dropzone").is_displayed())
    screenshot(browser, tmp_path / "invalid-image-wide.png")
    # A wrong token is the server's 401, shown the same way.
    open_page(browser, server, token="not-the-token", size=NARROW)
    choose_file(browser, RECEIPT)
    wait(browser).until(lambda d: d.find_element(By.ID, "message").is_displayed())
    assert browser.find_element(By.ID, "message-title").text == "unauthorized · HTTP 401"
    screenshot(browser, tmp_path / "unauthorized-narrow.png")
    assert script_errors(browser) == []


# ---------------------------------------------------------------- documents

def two_page_pdf(folder: Path) -> Path:
    """The receipt, then its top half: two pages with different lines, so that moving between
    pages shows in the lines."""
    receipt = Image.open(RECEIPT)
    top = receipt.crop((0, 0, receipt.width, receipt.height // 2))
    path = folder / "two-pages.pdf"
    path.write_bytes(images_pdf([receipt, top]))
    return path


def wait_for_pages(driver: webdriver.Chrome, count: int) -> list[WebElement]:
    wait(driver).until(lambda d: d.find_element(By.ID, "busy").get_attribute("hidden") is not None
                       and len(d.find_elements(By.CSS_SELECTOR, "#page-strip .page-tile")) == count)
    return driver.find_elements(By.CSS_SELECTOR, "#page-strip .page-tile")


def assert_page_shown(driver: webdriver.Chrome, page: dict) -> None:
    """The page's lines, one box per line where the API puts it, each with its text, over a
    blank page of the page's shape."""
    assert driver.find_element(By.ID, "lines-title").get_attribute("textContent") == \
        f"Page {page['page']}"
    assert shown_lines(driver) == [line["text"] for line in page["lines"]]
    overlay = driver.find_element(By.ID, "overlay")
    assert overlay.get_dom_attribute("viewBox") == f"0 0 {page['width']} {page['height']}"
    polygons = driver.find_elements(By.CSS_SELECTOR, "#overlay polygon.box")
    assert len(polygons) == len(page["lines"])
    for polygon, line in zip(polygons, page["lines"]):
        points = [[float(v) for v in point.split(",")]
                  for point in polygon.get_attribute("points").split()]
        assert points == [[float(v) for v in point] for point in line["box"]]
    texts = driver.find_elements(By.CSS_SELECTOR, "#overlay text.box-text")
    assert [text.get_attribute("textContent") for text in texts] == [
        line["text"] for line in page["lines"]]
    stage = rect(driver, driver.find_element(By.ID, "stage"))
    assert abs(stage["width"] / stage["height"] - page["width"] / page["height"]) < 0.01
    assert rect(driver, overlay) == stage
    assert driver.find_element(By.ID, "picture").get_attribute("hidden") is not None
    assert "Reconstructed page" in driver.find_element(By.ID, "stage-note").text


def test_a_pdf_is_shown_page_by_page(server: Server, browser: webdriver.Chrome,
                                     tmp_path: Path):
    pdf = two_page_pdf(tmp_path)
    open_page(browser, server, token=server.token)
    choose_file(browser, pdf)
    tiles = wait_for_pages(browser, 2)
    status, api = server.ocr(pdf.read_bytes())
    assert status == 200 and api["kind"] == "pdf" and api["page_count"] == 2
    assert api["cached"] is True  # the page's own run filled the cache
    first, second = api["pages"]
    assert 0 < len(second["lines"]) < len(first["lines"])

    # The tiles: number, line count and size of each page, the first one chosen.
    for tile, page in zip(tiles, api["pages"]):
        text = tile.text
        assert str(page["page"]) in text and f"{len(page['lines'])} lines" in text
        assert f"{page['width']} × {page['height']}" in text
        assert len(tile.find_elements(By.CSS_SELECTOR, "polygon.thumb-line")) == len(page["lines"])
    assert tiles[0].get_attribute("aria-current") == "page"
    assert browser.find_element(By.ID, "page-label").text == "Page 1 of 2"
    chips = browser.find_element(By.ID, "chips").text
    assert "PDF · 2 pages" in chips and f"{first['width']} × {first['height']} px" in chips
    assert_page_shown(browser, first)
    screenshot(browser, tmp_path / "pdf-wide.png")

    # A tile's click, the pager and the arrow keys move between the pages.
    tiles[1].click()
    assert tiles[1].get_attribute("aria-current") == "page"
    assert tiles[0].get_attribute("aria-current") == "false"
    assert_page_shown(browser, second)
    assert browser.find_element(By.ID, "page-next").get_attribute("disabled") is not None
    browser.find_element(By.ID, "page-prev").click()
    assert_page_shown(browser, first)
    tiles[0].send_keys("\ue014")  # ArrowRight
    assert_page_shown(browser, second)
    assert browser.switch_to.active_element == tiles[1]
    # Pointing at a line lights its box on the page.
    items = browser.find_elements(By.CSS_SELECTOR, "#lines .line")
    ActionChains(browser).move_to_element(items[1]).perform()
    polygons = browser.find_elements(By.CSS_SELECTOR, "#overlay polygon.box")
    assert "active" in polygons[1].get_attribute("class")
    screenshot(browser, tmp_path / "pdf-page-2-wide.png")

    # The JSON download is the whole document.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(downloads)})
    browser.find_element(By.ID, "download").click()
    saved = wait_for_download(browser, downloads / "two-pages.ocr.json")
    assert json.loads(saved.read_text())["pages"] == api["pages"]

    # Pages chosen under "PDF and TIFF pages": only page 2 is read.
    browser.find_element(By.CSS_SELECTOR, "#document-options-panel summary").click()
    browser.find_element(By.ID, "opt-pages").send_keys("2")
    browser.find_element(By.ID, "run").click()
    tiles = wait_for_pages(browser, 1)
    assert "1 of 2 pages" in browser.find_element(By.ID, "page-count").text
    assert_page_shown(browser, second)

    open_page(browser, server, token=server.token, dark=True)
    choose_file(browser, pdf)
    wait_for_pages(browser, 2)
    screenshot(browser, tmp_path / "pdf-wide-dark.png")
    open_page(browser, server, token=server.token, size=NARROW)
    choose_file(browser, pdf)
    wait_for_pages(browser, 2)[1].click()
    assert_page_shown(browser, second)
    screenshot(browser, tmp_path / "pdf-narrow.png", full_page=True)
    assert not any("Traceback" in line for line in server.log)
    assert script_errors(browser) == []


def test_a_multi_page_tiff_is_shown_like_a_pdf(server: Server, browser: webdriver.Chrome,
                                                tmp_path: Path):
    # Browsers display no TIFF: its frames are pages, reconstructed like a PDF's.
    receipt = Image.open(RECEIPT).convert("RGB")
    tiff = tmp_path / "fax.tiff"
    tiff.write_bytes(tiff_bytes([receipt, receipt.crop((0, 0, 500, 250))]))
    open_page(browser, server, token=server.token)
    choose_file(browser, tiff)
    tiles = wait_for_pages(browser, 2)
    status, api = server.ocr(tiff.read_bytes())
    assert status == 200 and api["kind"] == "tiff"
    assert "TIFF · 2 pages" in browser.find_element(By.ID, "chips").text
    assert_page_shown(browser, api["pages"][0])
    tiles[1].click()
    assert_page_shown(browser, api["pages"][1])
    assert script_errors(browser) == []


def test_a_pdf_needing_a_password_says_so(server: Server, browser: webdriver.Chrome,
                                          tmp_path: Path):
    encrypted = tmp_path / "locked.pdf"
    encrypted.write_bytes(text_pdf([["Hello there"]], owner_password="owner",
                                   user_password="secret"))
    open_page(browser, server, token=server.token)
    choose_file(browser, encrypted)
    wait(browser).until(lambda d: d.find_element(By.ID, "message").is_displayed())
    assert browser.find_element(By.ID, "message-title").text == "password_required · HTTP 400"
    assert "password" in browser.find_element(By.ID, "message-hint").text
    # The password field is open and focused; with the password the document reads.
    password = browser.find_element(By.ID, "opt-password")
    assert password.is_displayed() and browser.switch_to.active_element == password
    password.send_keys("secret")
    browser.find_element(By.ID, "run").click()
    wait_for_pages(browser, 1)
    assert browser.find_element(By.ID, "message").get_attribute("hidden") is not None
    assert script_errors(browser) == []


# ---------------------------------------------------------------- jobs

def open_jobs(driver: webdriver.Chrome, server: Server, **kwargs) -> None:
    open_page(driver, server, token=server.token, **kwargs)
    driver.find_element(By.CSS_SELECTOR, 'a.view-tab[data-view="jobs"]').click()
    wait(driver).until(lambda d: d.find_element(By.ID, "view-jobs").is_displayed())
    assert driver.find_element(By.ID, "view-read").get_attribute("hidden") is not None
    assert driver.title == "Jobs · ppocr-server"


def job_card(driver: webdriver.Chrome, name: str) -> WebElement | None:
    for card in driver.find_elements(By.CSS_SELECTOR, "#jobs-list .job"):
        if card.find_element(By.CLASS_NAME, "job-name").text == name:
            return card
    return None


def wait_for_job(driver: webdriver.Chrome, name: str, status: str) -> WebElement:
    wait(driver).until(lambda d: (card := job_card(d, name)) is not None
                       and card.get_attribute("data-status") == status)
    return job_card(driver, name)


# What each job card showed, every time it changed: the page's own record of its progress.
RECORD_PROGRESS = """
    window.progressSeen = [];
    const list = document.getElementById("jobs-list");
    const note = () => {
      for (const card of list.querySelectorAll(".job")) {
        const entry = [card.querySelector(".job-name").textContent, card.dataset.status,
                       card.querySelector(".progress-figure").textContent];
        const last = window.progressSeen.findLast((seen) => seen[0] === entry[0]);
        if (!last || last[1] !== entry[1] || last[2] !== entry[2]) window.progressSeen.push(entry);
      }
    };
    new MutationObserver(note).observe(list, {subtree: true, childList: true,
                                              characterData: true, attributes: true});
"""


def test_folder_and_zip_jobs_run_in_the_jobs_tab(server: Server, browser: webdriver.Chrome,
                                                 tmp_path: Path):
    open_jobs(browser, server)
    browser.execute_script(RECORD_PROGRESS)
    # A folder that is not there: the server's error, readable.
    browser.find_element(By.ID, "job-directory").send_keys("no-such-folder")
    browser.find_element(By.ID, "folder-job-start").click()
    message = browser.find_element(By.ID, "jobs-message")
    wait(browser).until(lambda d: message.is_displayed())
    assert message.find_element(By.CLASS_NAME, "message-title").text == "file_not_found · HTTP 404"
    assert "no-such-folder" in message.find_element(By.CLASS_NAME, "message-text").text

    # The receipts folder, sub-folders included.
    directory = browser.find_element(By.ID, "job-directory")
    directory.clear()
    directory.send_keys("receipts")
    browser.find_element(By.ID, "job-recursive").click()
    browser.find_element(By.ID, "folder-job-start").click()
    card = wait_for_job(browser, "receipts", "done")
    assert not message.is_displayed()
    job_id = card.get_attribute("data-job-id")
    job = server.get_json(f"/jobs/{job_id}")
    assert job["status"] == "done" and job["total"] == 4 and job["done"] == 4
    # It was seen on its way: queued or running first, the figure rising to 100%.
    seen = [entry for entry in browser.execute_script("return window.progressSeen")
            if entry[0] == "receipts"]
    assert seen[0][1] in ("queued", "running") and seen[-1] == ["receipts", "done", "100%"]
    figures = [int(figure.rstrip("%")) for _, _, figure in seen if figure.endswith("%")]
    assert figures == sorted(figures)
    facts = card.find_element(By.CLASS_NAME, "job-facts").text
    assert "4 of 4 items read" in facts
    if job["cached"]:
        assert f"{job['cached']} from the cache" in facts
    bar = card.find_element(By.CLASS_NAME, "progress")
    assert bar.get_attribute("aria-valuenow") == "4" and bar.get_attribute("aria-valuemax") == "4"
    assert card.find_element(By.CLASS_NAME, "job-cancel").get_attribute("hidden") is not None
    # The polling stopped with the job: no timer is left (the badge says nothing is running).
    assert browser.find_element(By.ID, "jobs-badge").get_attribute("hidden") is not None

    # Details: the last items read.
    card.find_element(By.CLASS_NAME, "job-details-toggle").click()
    wait(browser).until(lambda d: len(card.find_elements(By.CSS_SELECTOR, ".recent-item")) > 0)
    recent = card.find_element(By.CLASS_NAME, "job-details").text
    assert "more/d.jpg" in recent and "16 lines" in recent

    # The exports download with the token; what they hold is what the API serves.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(downloads)})
    for fmt in ("csv", "json"):
        card.find_element(By.CSS_SELECTOR, f'.export[data-format="{fmt}"]').click()
        saved = wait_for_download(browser, downloads / f"job-{job_id}.{fmt}")
        assert saved.read_bytes() == server.request(
            "GET", f"/jobs/{job_id}/results?format={fmt}").body
    rows = list(csv.reader(io.StringIO((downloads / f"job-{job_id}.csv").read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    items = json.loads((downloads / f"job-{job_id}.json").read_text())
    assert sorted(item["file"] for item in items) == ["a.jpg", "b.jpg", "c.jpg", "more/d.jpg"]
    assert len(rows) - 1 == sum(len(item["lines"]) for item in items)
    _, receipt = server.ocr(RECEIPT.read_bytes())
    assert [line["text"] for line in items[0]["lines"]] == [
        line["text"] for line in receipt["lines"]]

    # A ZIP upload.
    archive = tmp_path / "pages.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("one.jpg", RECEIPT.read_bytes())
        zipped.writestr("inner/two.jpg", receipt_variant(70))
    browser.find_element(By.ID, "zip-input").send_keys(str(archive))
    assert "pages.zip" in browser.find_element(By.ID, "zip-name").text
    browser.find_element(By.ID, "zip-job-start").click()
    zip_card = wait_for_job(browser, "pages.zip", "done")
    assert zip_card.find_element(By.CLASS_NAME, "job-source").text == "ZIP"
    assert "2 of 2 items read" in zip_card.find_element(By.CLASS_NAME, "job-facts").text
    zip_card.find_element(By.CSS_SELECTOR, '.export[data-format="txt"]').click()
    zip_id = zip_card.get_attribute("data-job-id")
    text = wait_for_download(browser, downloads / f"job-{zip_id}.txt")
    assert "==> one.jpg (page 1) <==" in text.read_text()
    # Newest first.
    names = [node.text for node in browser.find_elements(By.CSS_SELECTOR, "#jobs-list .job-name")]
    assert names[:2] == ["pages.zip", "receipts"]
    screenshot(browser, tmp_path / "jobs-wide.png")

    # Cancel a job while it runs; delete one (two clicks).
    directory.clear()
    directory.send_keys("many")
    browser.find_element(By.ID, "folder-job-start").click()
    # Its bar moves while it runs (the page polls; nothing is reloaded).
    wait(browser).until(lambda d: (card := job_card(d, "many")) is not None
                        and card.get_attribute("data-status") == "running"
                        and card.find_element(By.CLASS_NAME, "progress-figure").text
                        not in ("0%", "–"))
    # Held from here until it is cancelled, so it cannot finish first on a fast machine.
    workers = server.workers()
    for worker in workers:
        worker.suspend()
    try:
        running = job_card(browser, "many")
        assert running.find_element(By.CLASS_NAME, "job-cancel").is_displayed()
        assert browser.find_element(By.ID, "jobs-badge").text == "1"
        done = int(running.find_element(By.CLASS_NAME, "progress").get_attribute(
            "aria-valuenow"))
        assert 0 < done < 12
        screenshot(browser, tmp_path / "jobs-running-wide.png")
        job_card(browser, "many").find_element(By.CLASS_NAME, "job-cancel").click()
        cancelled = wait_for_job(browser, "many", "cancelled")
    finally:
        for worker in workers:
            worker.resume()
    assert server.get_json(f"/jobs/{cancelled.get_attribute('data-job-id')}")["status"] == \
        "cancelled"
    delete = zip_card.find_element(By.CLASS_NAME, "job-delete")
    delete.click()
    assert delete.text == "Delete for good?"
    delete.click()
    wait(browser).until(lambda d: job_card(d, "pages.zip") is None)
    assert server.request("GET", f"/jobs/{zip_id}").status == 404

    open_jobs(browser, server, dark=True)
    wait_for_job(browser, "receipts", "done")
    screenshot(browser, tmp_path / "jobs-wide-dark.png")
    open_jobs(browser, server, size=NARROW)
    wait_for_job(browser, "receipts", "done")
    screenshot(browser, tmp_path / "jobs-narrow.png", full_page=True)
    assert not any("Traceback" in line for line in server.log)
    assert script_errors(browser) == []


def test_a_zip_chosen_on_the_read_tab_goes_to_the_jobs_tab(server: Server,
                                                          browser: webdriver.Chrome,
                                                          tmp_path: Path):
    archive = tmp_path / "dropped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("one.jpg", RECEIPT.read_bytes())
    open_page(browser, server, token=server.token)
    choose_file(browser, archive)
    wait(browser).until(lambda d: d.find_element(By.ID, "view-jobs").is_displayed())
    assert "dropped.zip" in browser.find_element(By.ID, "zip-name").text
    assert browser.find_element(By.ID, "zip-job-start").is_enabled()
    assert script_errors(browser) == []


@pytest.fixture(autouse=True)
def _keep_screenshots(request, tmp_path: Path) -> Iterator[None]:
    """Prints where the screenshots are (pytest keeps the last few tmp_paths)."""
    yield
    shots = sorted(tmp_path.glob("*.png"))
    if shots:
        sys.stderr.write(f"\nscreenshots: {tmp_path}\n")

