"""Headless Chromium for the browser tests: Debian's chromium, driven by Playwright (executable_path),
with fake camera, microphone and screen, loopback only (the suite runs in a namespace holding only lo).
The ``browser`` fixture is in conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots (ignored by git)
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
    "--auto-select-desktop-capture-source=Entire screen",  # getDisplayMedia picks the (virtual) screen
]

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)"
)


async def frames(page) -> list[int]:
    """Frames decoded so far, per received video track of the page's Room."""
    return [s["framesDecoded"] for s in await page.evaluate("window.room ? window.room.receivedVideo() : []")]
