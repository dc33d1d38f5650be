"""The web page at /, end to end: a real server, headless Chromium, a person's gestures.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright for Python; the
browser Playwright would download is never used. Digits are drawn with mouse strokes
traced from real MNIST test digits, so the drawing goes through the same PNG upload and
preprocessing as any other client's image.
"""

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import (
    Browser,
    FilePayload,
    Page,
    Playwright,
    Request,
    sync_playwright,
)

from tests.digits import encode
from tests.server import REPO_ROOT, running_server
from training.data import RawSplit

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps dialling Google's hosts, which fail here.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
TIMEOUT_MS = 15_000
# A traced drawing is thicker than the original: only digits the model reads with
# confidence make a fair test of the page rather than of the model.
CONFIDENT = 0.995
DIGITS_TO_DRAW = 4
INK_THRESHOLD = 128


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url(trained_model_path: Path) -> Iterator[str]:
    with running_server(trained_model_path) as url:
        yield url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium)",
            pytrace=False,
        )
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    """The page, freshly loaded with its summary shown; fails on script errors or off-host loads."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    script_errors: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))

    def note_foreign(request: Request) -> None:
        if not request.url.startswith((base_url, "data:")):
            foreign.append(request.url)

    page.on("request", note_foreign)
    page.goto(f"{base_url}/")
    # Locators, not wait_for_function: polling a JS string is eval, which the page's CSP
    # rightly forbids.
    page.locator("#total-params", has_text="93,322").wait_for()
    yield page
    context.close()
    assert script_errors == []
    assert foreign == [], "the page must work offline: everything comes from the service"


@pytest.fixture(scope="module")
def confident_digits(base_url: str, mnist_test_digits: RawSplit) -> list[int]:
    """Indices of test digits of different labels that the model gets right, confidently."""
    images = mnist_test_digits.images[:300]
    response = httpx.post(f"{base_url}/predict", json={"images": images.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    picked: dict[int, int] = {}
    for index, prediction in enumerate(response.json()["predictions"]):
        label = int(mnist_test_digits.labels[index])
        if label in picked or prediction["digit"] != label:
            continue
        if prediction["confidence"] >= CONFIDENT:
            picked[label] = index
    assert len(picked) >= DIGITS_TO_DRAW, f"only digits {sorted(picked)} read confidently"
    return list(picked.values())[:DIGITS_TO_DRAW]


# --- helpers ------------------------------------------------------------------------------


def strokes_from_digit(image: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """One horizontal stroke per run of inked pixels in each row, in 28x28 pixel units.

    With a brush as thick as a row, the strokes cover the digit's shape the way a person's
    pen would: the page never sees the original pixels, only the gestures.
    """
    strokes = []
    for row, pixels in enumerate(image >= INK_THRESHOLD):
        columns = np.flatnonzero(pixels)
        if columns.size == 0:
            continue
        # Consecutive inked columns form one run; a gap starts the next.
        runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
        for run in runs:
            y = row + 0.5
            strokes.append(((run[0] + 0.5, y), (run[-1] + 0.5, y)))
    return strokes


def draw(page: Page, image: np.ndarray) -> None:
    box = page.locator("#pad").bounding_box()
    assert box is not None
    scale = box["width"] / 28

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + point[0] * scale, box["y"] + point[1] * scale

    for start, end in strokes_from_digit(image):
        page.mouse.move(*at(start))
        page.mouse.down()
        page.mouse.move(*at(end), steps=4)
        page.mouse.up()


def answer(page: Page) -> dict[str, Any]:
    """What the page shows once the newest prediction has come back."""
    page.wait_for_selector('#result[data-state="done"]')
    return {
        "digit": page.text_content("#answer-digit"),
        "confidence": page.text_content("#answer-confidence"),
        "top_bar": page.text_content(".bar-row.top .bar-label"),
        "bars": page.eval_on_selector_all(
            ".bar-track", "bars => bars.map(b => Number(b.getAttribute('aria-valuenow')))"
        ),
    }


# Wraps the page's fetch to note each multipart part it sends: field, type, first bytes.
RECORD_UPLOADS = """() => {
    window.sentParts = [];
    const send = window.fetch;
    window.fetch = async (url, options = {}) => {
        if (options.body instanceof FormData) {
            for (const [field, value] of options.body.entries()) {
                const head = value instanceof Blob
                    ? Array.from(new Uint8Array(await value.slice(0, 8).arrayBuffer()))
                    : [];
                window.sentParts.push({ url: String(url), field, type: value.type || "", head });
            }
        }
        return send(url, options);
    };
}"""


def png(image: np.ndarray, size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def upload(page: Page, name: str, data: bytes, mime_type: str) -> None:
    page.set_input_files(
        "#file-input", files=FilePayload(name=name, mimeType=mime_type, buffer=data)
    )


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("pick", range(DIGITS_TO_DRAW))
def test_a_digit_drawn_with_the_mouse_is_read(
    page: Page, confident_digits: list[int], mnist_test_digits: RawSplit, pick: int
) -> None:
    index = confident_digits[pick]
    label = str(mnist_test_digits.labels[index])
    page.evaluate(RECORD_UPLOADS)
    draw(page, mnist_test_digits.images[index])
    shown = answer(page)
    # The page uses the same /predict as every client: the drawing goes up as a PNG file.
    sent = page.evaluate("window.sentParts")
    assert sent, "no request to /predict"
    for part in sent:
        assert part["url"].endswith("/predict"), part
        assert (part["field"], part["type"]) == ("file", "image/png"), part
        assert bytes(part["head"]) == b"\x89PNG\r\n\x1a\n", part
    assert f"Predicted digit {label}" in (page.text_content("#status") or "")
    assert shown["digit"] == label, shown
    assert shown["top_bar"] == label, shown
    assert shown["confidence"].endswith("% confident"), shown
    assert int(np.argmax(shown["bars"])) == int(label), shown
    assert abs(sum(shown["bars"]) - 100) < 1, shown


@pytest.mark.parametrize(
    "style", ["white on black, 28 px", "dark on light, 112 px"], ids=["mnist", "scan"]
)
def test_an_uploaded_png_is_read(
    page: Page, confident_digits: list[int], mnist_test_digits: RawSplit, style: str
) -> None:
    index = confident_digits[0]
    digit = mnist_test_digits.images[index]
    data = png(digit) if style.startswith("white") else png(255 - digit, size=112)
    upload(page, "digit.png", data, "image/png")
    shown = answer(page)
    assert shown["digit"] == str(mnist_test_digits.labels[index]), shown
    # The upload shows on the pad, so the person sees what was read.
    assert "has-ink" in (page.get_attribute("#drop-zone", "class") or "")


def test_an_image_dropped_on_the_pad_is_read(
    page: Page, confident_digits: list[int], mnist_test_digits: RawSplit
) -> None:
    index = confident_digits[1]
    encoded = base64.b64encode(encode(mnist_test_digits.images[index])).decode()
    transfer = page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    assert "dragging" in (page.get_attribute("#drop-zone", "class") or "")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    shown = answer(page)
    assert shown["digit"] == str(mnist_test_digits.labels[index]), shown
    assert "dragging" not in (page.get_attribute("#drop-zone", "class") or "")


@pytest.mark.parametrize(
    ("name", "data", "mime_type"),
    [
        ("blank.png", encode(np.full((28, 28), 255, np.uint8)), "image/png"),
        ("notes.png", b"this is text, not a picture", "image/png"),
    ],
    ids=["blank", "not-an-image"],
)
def test_the_services_complaint_is_shown_in_an_alert(
    page: Page, base_url: str, name: str, data: bytes, mime_type: str
) -> None:
    expected = httpx.post(f"{base_url}/predict", files={"file": (name, data, mime_type)})
    assert 400 <= expected.status_code < 500, expected.text
    detail: str = expected.json()["detail"]
    upload(page, name, data, mime_type)
    page.wait_for_selector('#result[data-state="error"]')
    alert = page.locator("#error[role=alert]")
    assert alert.is_visible()
    shown = page.text_content("#error-detail") or ""
    assert shown == detail[0].upper() + detail[1:]
    assert page.text_content("#answer-digit") == "?"


def test_the_layer_table_comes_from_the_summary(page: Page, base_url: str) -> None:
    summary = httpx.get(f"{base_url}/summary").json()
    assert page.text_content("#total-params") == "93,322"
    rows = page.locator("#layers-body tr")
    assert rows.count() == len(summary["summary"]["layers"]) == 8
    first = rows.nth(0).inner_text()
    assert "(None, 26, 26, 32)" in first
    assert "320" in first
    accuracy = summary["model_card"]["test_accuracy"]
    assert (page.text_content("#fact-accuracy") or "").startswith(f"{accuracy * 100:.2f}%")
    assert page.text_content("#fact-model") == summary["model"]
    assert page.text_content("#fact-version") == summary["model_version"] == "1"
    assert page.text_content("#model-badge-text") == "Model version 1 ready on CPU"
    assert (page.text_content("#fact-provider") or "").startswith("CPU")


def test_keyboard_reaches_clear_and_upload_and_clear_works(
    page: Page, confident_digits: list[int], mnist_test_digits: RawSplit
) -> None:
    draw(page, mnist_test_digits.images[confident_digits[2]])
    answer(page)
    focused: list[str] = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        if {"clear-button", "file-input"} <= set(focused):
            break
    assert {"clear-button", "file-input"} <= set(focused), focused
    # The focus must be visible: the file input is hidden, so its label carries the ring.
    ring = "(s) => getComputedStyle(s).outlineStyle"
    page.focus("#file-input")
    assert page.eval_on_selector("label[for=file-input]", ring) != "none"
    page.focus("#clear-button")
    page.keyboard.press("Enter")
    page.wait_for_selector('#result[data-state="empty"]')
    assert page.text_content("#answer-digit") == "\N{EN DASH}"
    inked = page.evaluate(
        """() => {
            const pad = document.getElementById("pad");
            const pixels = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
            return pixels.some((value, i) => i % 4 !== 3 && value !== 0);
        }"""
    )
    assert inked is False


def test_screenshots_for_people(
    page: Page, confident_digits: list[int], mnist_test_digits: RawSplit
) -> None:
    index = confident_digits[3]
    draw(page, mnist_test_digits.images[index])
    assert answer(page)["digit"] == str(mnist_test_digits.labels[index])
    ARTIFACTS.mkdir(exist_ok=True)
    desktop = ARTIFACTS / "web-page.png"
    page.screenshot(path=desktop, full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    mobile = ARTIFACTS / "web-page-mobile.png"
    page.screenshot(path=mobile, full_page=True)
    # Narrow screens stack the panels rather than scroll sideways.
    overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False
    for path in (desktop, mobile):
        with Image.open(path) as shot:
            assert shot.format == "PNG"


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_for_the_tab(
    browser: Browser, trained_model_path: Path, mnist_test_digits: RawSplit
) -> None:
    key = "web-page-key-71b3e9"
    with running_server(trained_model_path, MNIST_API_KEYS=key) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.goto(f"{url}/")
        # /summary answered 401: the page asks, and shows no layer table yet.
        page.wait_for_selector("#key-form:not([hidden])")
        assert page.text_content("#total-params") != "93,322"
        page.fill("#key-input", "a wrong key")
        page.click("#key-submit")
        page.locator("#key-message", has_text="refused").wait_for()
        assert page.is_visible("#key-form")
        page.screenshot(path=str(ARTIFACTS / "web-page-key-form.png"))
        page.fill("#key-input", key)
        page.click("#key-submit")
        page.locator("#total-params", has_text="93,322").wait_for()
        assert page.is_hidden("#key-form")
        page.set_input_files(
            "#file-input",
            FilePayload(
                name="d.png", mimeType="image/png", buffer=encode(mnist_test_digits.images[0])
            ),
        )
        assert answer(page)["digit"] == str(mnist_test_digits.labels[0])
        # Reloaded in the same tab: the key is remembered, no question asked.
        page.reload()
        page.locator("#total-params", has_text="93,322").wait_for()
        assert page.is_hidden("#key-form")
        assert key not in page.content()
        page.screenshot(path=str(ARTIFACTS / "web-page-key.png"))
        context.close()
    assert script_errors == []
