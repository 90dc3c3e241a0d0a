"""Where speechprune keeps converted models and built data sets."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPEECHPRUNE_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$SPEECHPRUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/speechprune`` or ``~/.cache/speechprune``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "speechprune"
