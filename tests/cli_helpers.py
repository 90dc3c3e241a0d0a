"""Running the ``speechprune`` command in a subprocess, and where the real speech lives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOUNDS = Path("/usr/share/asterisk/sounds/en")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechprune", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=1200)
