"""Fixtures for the out-of-domain source readers: a cache folder of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechprune.paths import CACHE_ENV


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty speechprune cache for this test (converted audio lands in ``cache/sources/<name>``)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root
