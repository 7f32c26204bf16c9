"""Debian's chromium for Playwright (never ``playwright install``: see TESTING.md) and screenshots as artifacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium() -> str:
    """The chromium binary; in CI its absence fails the test, elsewhere it skips it with the reason."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("no chromium on this machine: apt-get install chromium")
    return found


def shot(page: Any, folder: str, name: str) -> None:
    """A full-page screenshot to ``test-artifacts/<folder>/<name>.png``."""
    out = ARTIFACTS / folder
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
