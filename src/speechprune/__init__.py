"""speechprune: make speech models smaller and faster, and prove what it cost in accuracy."""

from importlib.metadata import PackageNotFoundError, version

try:  # pyproject.toml is the one version source
    __version__ = version("speechprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
