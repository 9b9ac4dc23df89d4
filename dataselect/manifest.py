"""What a job records about itself: versions of the packages that shaped the result."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

RECORDED_PACKAGES = ("dataselect", "numpy", "pandas", "pyarrow", "polars", "dask",
                     "distributed", "nltk")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour can change scores or bytes."""
    found = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
