"""Exceptions raised by daskmri.

Two families:

* :class:`RecordError` and its subclasses describe why *one record* could not be
  parsed. The build catches them, drops the record and keeps going; their
  message becomes the ``reason`` column of :func:`daskmri.dropped`.
* :class:`DaskmriError` subclasses that are not record errors stop the call,
  because nothing useful can be built (no ``link.csv``, a bad argument, ...).

Bad data is dropped; bugs are raised. :data:`DATA_ERRORS` are what a damaged file
raises (a :class:`RecordError`, or an ``OSError`` from a file that cannot be read).
Anything else a reader raises is a bug, in daskmri or in a user's ``reader=``: it
reaches the caller as a :class:`ReaderError` that names the record, with the
original exception chained as its ``__cause__`` (``on_error="drop"`` turns those
into dropped rows too).

Every message names the file involved and, where there is one, the fix.
"""

from __future__ import annotations

import os
import pickle
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DATA_ERRORS",
    "ContourError",
    "DaskmriError",
    "DicomError",
    "LayoutError",
    "MissingExtraError",
    "ReaderError",
    "RecordError",
    "StaleStoreError",
    "StaleStoreWarning",
    "StoreError",
    "VolumeError",
    "WorkerStartError",
    "one_line",
    "redact",
]

#: Option names (fsspec ``storage_options``, at any depth) whose values are secrets.
_SECRET_NAME = re.compile(r"key|secret|token|pass|credential|signature|sas|auth", re.IGNORECASE)
#: Environment variables that hold the credentials of object stores.
SECRET_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)
#: user:password@ in a URL (the password may hold a /; Azure's container@account, with
#: no colon, is no secret), and the values of query parameters such as X-Amz-Signature=.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@'\":]*:[^\s@'\"]*@", re.IGNORECASE)
_QUERY_SECRET = re.compile(
    r"([?&][\w.-]*(?:signature|sig|token|key|secret|credential|password)[\w.-]*=)[^&\s'\"]+",
    re.IGNORECASE,
)
#: Shorter values are not searched for: replacing "a" everywhere would garble the text.
_MIN_SECRET = 4


def _secrets(options: Any) -> Iterable[str]:
    """The secret values in ``options``: those under a secret-looking name, at any depth."""
    if isinstance(options, Mapping):
        for name, value in options.items():
            if isinstance(value, str) and _SECRET_NAME.search(str(name)):
                yield value
            else:
                yield from _secrets(value)
    elif isinstance(options, (list, tuple)):
        for value in options:
            yield from _secrets(value)


def redact(text: str, options: Any = None) -> str:
    """``text`` with every credential it may hold replaced by ``***``: the secret
    values of ``options`` (fsspec ``storage_options``: ``key``, ``secret``, ``token``,
    ... at any depth), those of the object stores' environment variables
    (``AWS_SECRET_ACCESS_KEY``, ...), the ``user:password@`` of a URL and secret
    query parameters (``X-Amz-Signature=...``). For messages, logs and attributes:
    daskmri never writes a credential anywhere.

    Examples
    --------
    >>> redact("s3://bucket/ds.zarr with key AKIA1234", {"key": "AKIA1234", "anon": False})
    's3://bucket/ds.zarr with key ***'
    >>> redact("https://me:hunter2@host/x?X-Amz-Signature=abc&part=1")
    'https://***@host/x?X-Amz-Signature=***&part=1'
    """
    text = _USERINFO.sub(r"\1***@", str(text))
    text = _QUERY_SECRET.sub(r"\1***", text)
    environment = (os.environ.get(name) for name in SECRET_ENVIRONMENT)
    found = {*_secrets(options), *(value for value in environment if value)}
    for secret in sorted(found, key=len, reverse=True):  # longest first: one may hold another
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "***")
    return text


def one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line, for a reason or a message built from
    another library's exception (pydicom's and s3fs's may span several lines).

    Examples
    --------
    >>> one_line(ValueError("line one\\n  line two"))
    'ValueError: line one line two'
    """
    return " ".join(f"{type(exc).__name__}: {exc}".split())


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
        # args are what __init__ takes, so that the error unpickles whichever reducer
        # pickled it (distributed installs tblib's, which rebuilds from args).
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DicomError(RecordError):
    """A DICOM file is unreadable: truncated, not DICOM, no pixels, too large, ..."""


class ContourError(RecordError):
    """A contour file is unreadable: bad line, too few points, non-finite, outside the image."""


class RTStructError(RecordError):
    """An RTSTRUCT file, or the slice position it needs, cannot be read.

    An RTSTRUCT file, or the slice position it needs, cannot be read: not DICOM,
    truncated, not an RTSTRUCT, no structure set, a slice without its position."""


class VolumeError(RecordError):
    """A NIfTI volume or its label map is unreadable, too large, or not on the same grid."""


#: What a damaged or unreadable file raises: dropped as its record's reason, never raised.
#: Of the OSErrors, only those that say the file cannot be had: a timeout or a refused
#: connection in a reader is the infrastructure's failure, not the record's, and raises.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    RecordError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class ReaderError(DaskmriError, RuntimeError):
    """Reading one record raised something that is not a data error: a bug in a
    ``reader=`` or in daskmri. Raised in the caller, naming the record; the original
    exception is the ``__cause__`` (its traceback from the worker, where it ran in
    another process, is in its notes), or, for an exception that would not survive
    pickling, a RuntimeError that names its class and message.

    Parameters
    ----------
    record : str
        Which record, in words (patient, instance, file).
    cause : BaseException
        What the reader raised.

    Examples
    --------
    >>> error = ReaderError("patient P1, instance 3 (/d/3.dcm)", TypeError("bad"))
    >>> str(error).split(". ")[0]
    'reading patient P1, instance 3 (/d/3.dcm) raised TypeError: bad'
    >>> type(error.__cause__).__name__
    'TypeError'
    """

    def __init__(self, record: str, cause: BaseException, where: str | None = None) -> None:
        # The cause goes with the error to the caller's process: one that would not
        # unpickle there is replaced, here, by a RuntimeError naming it.
        portable = _portable(cause)
        if portable is not cause:
            portable.__traceback__ = cause.__traceback__
        if where and where not in getattr(portable, "__notes__", ()):
            portable.add_note(where)
        # args are what __init__ takes, so that the error unpickles whichever reducer
        # pickled it (distributed installs tblib's, which rebuilds from args).
        super().__init__(record, portable, where)
        self.record = record
        self.cause = portable
        self.__cause__ = portable

    def __str__(self) -> str:
        return (
            f"reading {self.record} raised {one_line(self.cause)}. That is a bug, not bad "
            "data: in your reader= if you passed one (fix it, raise "
            'daskmri.errors.RecordError for data it must drop, or pass on_error="drop"), '
            "else in daskmri (please report it, with daskmri.show_versions())"
        )

    def __reduce__(self) -> tuple:
        # A traceback does not pickle: the cause takes the one it had here as a note.
        where = None
        if self.cause.__traceback__ is not None:
            frames = "".join(traceback.format_tb(self.cause.__traceback__))
            where = f"Traceback in the worker (most recent call last):\n{frames.rstrip()}"
        return (type(self), (self.record, self.cause, where))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError that says what it was: an
    exception class whose ``__init__`` takes other arguments than its ``args`` does
    not unpickle, and would hide the error that carries it."""
    try:
        pickle.loads(pickle.dumps(exc))
        if type(exc).__reduce__ is BaseException.__reduce__:
            # What unpickling runs in the end. Checked apart: the round trip above can
            # pass where the receiver's fails (distributed installs tblib's reducers
            # for the exception classes it knows, in this process only).
            type(exc)(*exc.args)
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return exc


class StoreError(DaskmriError):
    """A Zarr store cannot be used as asked.

    A Zarr store cannot be used as asked: not a daskmri store, unfinished, or built
    differently; the message says which and what to run."""


class StaleStoreError(StoreError):
    """The store's input files changed since it was built.

    The inputs changed since the store was built, and the call would mix the two;
    rebuild with ``mode="update"`` (re-parses only what changed) or ``mode="overwrite"``."""


class StaleStoreWarning(UserWarning):
    """The store no longer matches the files it was built from."""


class WorkerStartError(DaskmriError, RuntimeError):
    """A worker process cannot start at all.

    A worker process cannot start at all (its environment is broken, say); the
    message gives the last line it printed. Not a death caused by a record."""
