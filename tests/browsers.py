"""Headless Chromium for the browser tests: Debian's chromium, driven by Playwright (executable_path),
with fake camera, microphone and screen, loopback only (the suite runs in a namespace holding only lo).
The ``browser`` fixture is in conftest.py."""

from __future__ import annotations

import shutil
import subprocess
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

def noise_camera(directory: Path) -> str:
    """A camera file of moving noise (FFmpeg, 640x480, 30 fps): it takes every bit an encoder is
    given, where Chrome's built-in fake camera is so simple its encoder stays low whatever it may."""
    path = Path(directory) / "noise.y4m"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x480:rate=30", "-vf", "noise=alls=40:allf=t",
         "-t", "6", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return str(path)


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)"
)


async def frames(page) -> list[int]:
    """Frames decoded so far, per received video track of the page's Room."""
    return [s["framesDecoded"] for s in await page.evaluate("window.room ? window.room.receivedVideo() : []")]
