"""Versions of daskmri, its dependencies and the machine, for bug reports."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import TextIO

__all__ = ["show_versions", "versions"]

_PACKAGES = (
    "daskmri",
    "dask",
    "distributed",
    "pydicom",
    "nibabel",
    "numpy",
    "xarray",
    "pandas",
    "zarr",
    "numcodecs",
    # the stores at URLs: fsspec and its object-store backends
    "fsspec",
    "s3fs",
    "gcsfs",
    "adlfs",
    "loky",
    "tqdm",
    "matplotlib",
    "torch",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
)


def versions() -> dict[str, str | int | None]:
    """Versions and machine facts as a dict (None for a package not installed).

    Examples
    --------
    >>> versions()["python"].startswith("3.")
    True
    """
    info: dict[str, str | int | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        info["memory_bytes"] = None
    for name in _PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    # The code that runs, not the installed metadata: an editable install or a
    # PYTHONPATH checkout can run other code than the metadata names.
    from . import __version__

    info["daskmri"] = __version__
    return info


def show_versions(file: TextIO | None = None) -> None:
    """Print the versions of daskmri, its dependencies and the machine.

    Paste the output into a bug report.

    Examples
    --------
    >>> show_versions()  # doctest: +ELLIPSIS
    INSTALLED VERSIONS
    ...
    """
    file = sys.stdout if file is None else file
    print("INSTALLED VERSIONS", file=file)
    print("------------------", file=file)
    for key, value in versions().items():
        print(f"{key}: {value}", file=file)
