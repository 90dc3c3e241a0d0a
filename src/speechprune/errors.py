"""User-facing errors: one line that names the problem and the file."""

from __future__ import annotations

from pathlib import Path


class SpeechpruneError(Exception):
    """An error the CLI prints as a single line (no traceback) before exiting with status 2."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class AudioError(SpeechpruneError):
    """Audio that cannot be used: missing, corrupt, empty, too long."""


class ManifestError(SpeechpruneError):
    """A manifest that cannot be read, or a line in it that is malformed."""


class ModelError(SpeechpruneError):
    """An unknown model name, a folder that is not a supported model, or weights that fail their checksum."""


class ConfigError(SpeechpruneError):
    """Bad command options, recipe keys or run directories."""
