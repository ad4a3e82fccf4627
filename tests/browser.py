"""A headless Chromium for the tests: does a page show what it should in a real browser?"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Counts the page's images the browser decoded, once the page has loaded.
_IMAGE_CHECK = """
if (document.readyState !== "complete") {
  await new Promise((resolve) => window.addEventListener("load", resolve));
}
const images = Array.from(document.images);
return [images.filter((i) => i.complete && i.naturalWidth > 0).length, images.length];
"""


def find_chromium() -> str | None:
    """A Chromium-like browser on PATH (or Debian's /usr/bin/chromium), else None."""
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def chromium_command(chromium: str, profile: str | os.PathLike[str]) -> list[str]:
    """Headless Chromium that neither reaches the network nor keeps state between runs."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]


def check_images_in_browser(
    html_path: str | os.PathLike[str], chromium: str | None = None, *, timeout: float = 60.0
) -> tuple[int, int]:
    """(loaded, total): how many ``<img>`` of the page a headless Chromium decoded.

    Catches what string checks cannot: a corrupt image, a wrong MIME type, or an image
    blocked by the page's own security policy.
    """
    loaded, total = run_in_page(html_path, _IMAGE_CHECK, chromium, budget_ms=5000, timeout=timeout)
    return int(loaded), int(total)


_RESULT_BLOCK = re.compile(r'<pre id="mschange-test-result">(.*?)</pre>', re.S)


def run_in_page(
    html_path: str | os.PathLike[str],
    script: str,
    chromium: str | None = None,
    *,
    budget_ms: int = 20000,
    timeout: float = 180.0,
    screenshot: str | os.PathLike[str] | None = None,
    window: tuple[int, int] = (1600, 1000),
) -> Any:
    """Run ``script`` (an async function body) in a headless Chromium on a copy of the page.

    The copy sits beside the page, so it opens exactly as the original would from disk;
    the script's hash is added to the page's security policy and nothing else is allowed.
    What the function returns comes back through the DOM as JSON. With ``screenshot``, a
    second run saves the page as PNG after the script ran.
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError(errno.ENOENT, "no Chromium browser found", "chromium")
    page = Path(html_path).resolve()
    document = page.read_text(encoding="utf-8")
    runner = (
        "(async function () {\n"
        "  let result;\n"
        "  try { result = await (async function () {\n" + script + "\n  })(); }\n"
        "  catch (error) { result = {testError: String(error && error.stack || error)}; }\n"
        "  const block = document.createElement('pre');\n"
        "  block.id = 'mschange-test-result';\n"
        "  block.textContent = JSON.stringify(result);\n"
        "  document.body.appendChild(block);\n"
        "})();"
    )
    digest = base64.b64encode(hashlib.sha256(runner.encode("utf-8")).digest()).decode("ascii")
    allowed = f"'sha256-{digest}'"
    if "script-src " in document:
        document = document.replace("script-src ", f"script-src {allowed} ", 1)
    else:  # a page that runs no script of its own (the report)
        document = document.replace(
            "default-src 'none';", f"default-src 'none'; script-src {allowed};", 1
        )
    closing = document.lower().rfind("</body>")
    document = document[:closing] + f"<script>{runner}</script>" + document[closing:]
    copy = page.with_name(f".{page.stem}.pagetest{os.getpid()}.html")
    try:
        copy.write_text(document, encoding="utf-8")
        with tempfile.TemporaryDirectory(prefix="mschange-chromium-") as profile:
            base = [
                *chromium_command(browser, profile),
                f"--virtual-time-budget={budget_ms}",
                f"--window-size={window[0]},{window[1]}",
            ]
            result = subprocess.run(
                [*base, "--dump-dom", copy.as_uri()],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if screenshot is not None:
                subprocess.run(
                    [*base, f"--screenshot={Path(screenshot).resolve()}", copy.as_uri()],
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
    finally:
        copy.unlink(missing_ok=True)
    match = _RESULT_BLOCK.search(result.stdout)
    if match is None:
        raise RuntimeError(
            f"the test script gave no result on {page} (exit code {result.returncode}): "
            f"{result.stderr[-2000:]}"
        )
    return json.loads(html.unescape(match.group(1)))
