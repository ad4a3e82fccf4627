"""mschange: self-supervised detection of MS lesion changes between two FLAIR scans."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mschange")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
