"""Exceptions raised by daskmri.

Two families:

* :class:`RecordError` and its subclasses describe why *one record* could not be
  parsed. The build catches them, drops the record and keeps going; their
  message becomes the ``reason`` column of :func:`daskmri.dropped`.
* :class:`DaskmriError` subclasses that are not record errors stop the call,
  because nothing useful can be built (no ``link.csv``, a bad argument, ...).

Every message names the file involved and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "ContourError",
    "DaskmriError",
    "DicomError",
    "LayoutError",
    "MissingExtraError",
    "RecordError",
    "StaleStoreError",
    "StaleStoreWarning",
    "StoreError",
    "WorkerStartError",
]


class DaskmriError(Exception):
    """Base class of every error daskmri raises on purpose."""


class LayoutError(DaskmriError, ValueError):
    """The folder does not match the :class:`~daskmri.Layout` (e.g. no link file)."""


class MissingExtraError(DaskmriError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs {package!r}, which is not installed. "
            f"Install it with: pip install 'daskmri[{extra}]'"
        )
        self.package = package
        self.extra = extra


class RecordError(DaskmriError):
    """One record cannot be parsed; the build drops it and reports ``path`` and the reason.

    Parameters
    ----------
    path : str
        The file that was wrong.
    reason : str
        What was wrong, in words a user can act on.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DicomError(RecordError):
    """A DICOM file is unreadable: truncated, not DICOM, no pixels, too large, ..."""


class ContourError(RecordError):
    """A contour file is unreadable: bad line, too few points, non-finite, outside the image."""


class RTStructError(RecordError):
    """An RTSTRUCT file, or the slice position it needs, cannot be read: not DICOM,
    truncated, not an RTSTRUCT, no structure set, a slice without its position."""


class StoreError(DaskmriError):
    """A Zarr store cannot be used as asked: not a daskmri store, unfinished, or built
    differently; the message says which and what to run."""


class StaleStoreError(StoreError):
    """The inputs changed since the store was built, and the call would mix the two;
    rebuild with ``mode="update"`` (re-parses only what changed) or ``mode="overwrite"``."""


class StaleStoreWarning(UserWarning):
    """The store no longer matches the files it was built from."""


class WorkerStartError(DaskmriError, RuntimeError):
    """A worker process cannot start at all (its environment is broken, say); the
    message gives the last line it printed. Not a death caused by a record."""
