"""Headless Chromium for the tests: Debian's /usr/bin/chromium driven by Playwright.

Owns: launching it with the flags the project uses everywhere (no sandbox, no GPU, no
background networking, no first-run work), and opening HTML at a width and colour
scheme. Every request but the page itself is answered here, never sent: images get a
local PNG of the size Hugging Face's thumbnails have (1200x648), anything else is
aborted. So no test touches a host, and heights are measured with images in place.
Playwright's own browser downloads are never used (`executable_path`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.tools import require

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@cache
def png(width: int, height: int, rgb: tuple[int, int, int] = (110, 130, 190)) -> bytes:
    """A plain PNG of one colour (stdlib only)."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + (
        chunk(b"IEND", b"")
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    """The browser, closed afterwards."""
    require(CHROMIUM, "chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _answer(route: Route) -> None:
    if route.request.resource_type == "image":
        route.fulfill(status=200, content_type="image/png", body=png(1200, 648))
    else:
        route.abort()


def open_html(
    browser: Browser, html: str, *, width: int, scheme: str = "light", images: bool = True
) -> Page:
    """A new page showing `html` at `width` CSS pixels in the `scheme` colour scheme.
    With images=False every image request fails, as in a mail client blocking them."""
    page = browser.new_page(viewport={"width": width, "height": 800}, color_scheme=scheme)
    page.route("**/*", _answer if images else lambda route: route.abort())
    page.set_content(html, wait_until="load")
    return page


def page_height(page: Page) -> int:
    height: int = page.evaluate("document.documentElement.scrollHeight")
    return height


def open_url(
    browser: Browser, url: str, *, width: int, scheme: str = "light", allow: str
) -> Page:
    """A new page at `url` (a server of the test's own, whose URLs start with `allow`),
    `width` CSS pixels wide in the `scheme` colour scheme. Requests to `allow` go through;
    images elsewhere get the local PNG, anything else is aborted, as in `open_html`."""
    page = browser.new_page(viewport={"width": width, "height": 800}, color_scheme=scheme)

    def answer(route: Route) -> None:
        if route.request.url.startswith(allow):
            route.continue_()
        else:
            _answer(route)

    page.route("**/*", answer)
    page.goto(url, wait_until="load")
    return page
