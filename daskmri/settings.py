"""The settings that :func:`daskmri.load_dataset`, :func:`daskmri.build` and
:func:`daskmri.check` share, each checked once, here, as frozen values.

- :class:`Source`: what to read (the folder, its layout, which slices).
- :class:`Parsing`: how to read it (chunk size, limits, image size, reader).
- :class:`Compute`: where to run it (client or local scheduler, TLS, progress).

The public functions take these as keyword arguments and build the values first,
so a wrong argument fails before any folder is scanned or cluster contacted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .filesystem import LOCAL, FileSystem, split_root
from .fit import FITS
from .limits import DEFAULT_LIMITS, Limits
from .parse import DefaultReader, Dropping
from .record import Parsed, Record
from .sources.dicom_contours import SUNNYBROOK, Layout
from .sources.volumes import VolumeLayout
from .verdicts import Exclusion, as_exclusion

__all__ = ["ON_ERROR", "SCHEDULERS", "Compute", "Parsing", "Source", "check_chunk_size"]

#: The local schedulers (``scheduler=``); a cluster is ``client=``.
SCHEDULERS = ("sync", "threads", "processes")
#: What a reader's exceptions that are not data errors do (``on_error=``): stop the
#: call, naming the record, or drop the record like a damaged file.
ON_ERROR = ("raise", "drop")


@dataclass(frozen=True)
class Source:
    """A dataset folder (absolute path), its :class:`~daskmri.Layout`, which slices
    to keep (``labels``, see :func:`daskmri.scan`) and which records to leave out
    (``exclude``: a :class:`~daskmri.verdicts.Exclusion`, or None).

    Examples
    --------
    >>> Source.of("data", labels="i").labels
    'i'
    >>> Source.of("data", labels="x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: labels must be one of ('any', 'all', 'icontour', 'ocontour', 'i', 'o'), got 'x'
    """

    root: str
    layout: Layout | VolumeLayout = SUNNYBROOK
    labels: str = "any"
    #: Where the root is: the local disk, or the store of a root at a URL.
    fs: FileSystem = field(default=LOCAL, repr=False, compare=False)
    #: The records a verdicts file leaves out (``exclude=``), or None.
    exclude: Exclusion | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layout, (Layout, VolumeLayout)):
            raise TypeError(
                "layout must be a daskmri.Layout or daskmri.VolumeLayout (e.g. daskmri.ACDC), "
                f"got {type(self.layout).__name__}"
            )
        self.layout.label_kind(self.labels)  # raises for a label the layout does not have

    @classmethod
    def of(
        cls,
        root: str | os.PathLike[str],
        layout: Layout | VolumeLayout | None = None,
        labels: str = "any",
        options: dict | None = None,
        *,
        exclude: object = None,
    ) -> Source:
        """The source at ``root``: a local folder, or an fsspec URL whose filesystem
        takes ``options`` (``source_options=``), less the records ``exclude`` names
        (a verdicts file's path or an :class:`~daskmri.verdicts.Exclusion`, read here:
        a bad file fails before any work)."""
        layout = SUNNYBROOK if layout is None else layout
        exclusion = as_exclusion(exclude)
        fs, root = split_root(root, options)
        return cls(root, layout, labels, fs, exclusion)


def check_chunk_size(chunk_size: int) -> None:
    """Raise ``ValueError`` unless ``chunk_size`` is a positive int."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


@dataclass(frozen=True)
class Parsing:
    """Records per chunk (and per task), the bounds on what is read, the frame
    (``shape``; None: the first readable DICOM's size, resampled to ``spacing`` if
    given), how slices of another size meet it (``fit``), the pixel ``spacing`` to
    resample to (None: none), the reader (None: :func:`daskmri.read_record`), and what
    an exception from it that is not a data error does (``on_error``: ``"raise"`` a
    :class:`~daskmri.errors.ReaderError` naming the record, or ``"drop"`` the record).

    Examples
    --------
    >>> Parsing(chunk_size=0)
    Traceback (most recent call last):
    ...
    ValueError: chunk_size must be a positive int, got 0
    """

    chunk_size: int = 64
    limits: Limits = DEFAULT_LIMITS
    shape: tuple[int, int] | None = None
    reader: Callable[[Record], Parsed] | None = None
    fit: str = "drop"
    spacing: tuple[float, float] | None = None
    on_error: str = "raise"

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.limits is None:
            object.__setattr__(self, "limits", DEFAULT_LIMITS)
        if self.shape is not None:
            object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {self.fit!r}")
        if self.spacing is not None:
            object.__setattr__(self, "spacing", _spacing(self.spacing))
            if self.reader is not None:
                raise ValueError(
                    "spacing= resamples in daskmri's own reader; a custom reader= returns "
                    "its slices as they are, so resample in the reader (and pass no spacing=)"
                )

    def reader_for(self, shape: tuple[int, int]) -> Callable[[Record], Parsed]:
        """The reader to run: the user's, or :func:`~daskmri.read_record` bound to
        the limits and the dataset's image size; wrapped in
        :class:`~daskmri.parse.Dropping` for ``on_error="drop"``."""
        reader = self.reader
        if reader is None:
            reader = DefaultReader(self.limits, shape, self.fit, self.spacing)
        return Dropping(reader) if self.on_error == "drop" else reader

    def settings(self) -> dict:
        """What a store records of these settings (and a resumed build must match)."""
        spacing = None if self.spacing is None else list(self.spacing)
        return {"chunk_size": self.chunk_size, "fit": self.fit, "spacing": spacing}


def _spacing(value) -> tuple[float, float]:
    """``(row_mm, column_mm)`` from a number or a pair of positive numbers."""
    try:
        pair = (float(value), float(value)) if np.ndim(value) == 0 else tuple(map(float, value))
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise ValueError(
            f"spacing must be (row_mm, column_mm), two positive numbers, got {value!r}"
        )
    return pair


@dataclass(frozen=True)
class Compute:
    """Where to run: ``client`` (a ``distributed.Client``, a scheduler address, or
    None for the default client if any) or a local ``scheduler``; ``security`` for
    ``tls://`` addresses; ``progress`` for a bar on stderr.

    Examples
    --------
    >>> Compute(scheduler="gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: scheduler must be one of ('sync', 'threads', 'processes') or None, ...
    """

    client: Any = None
    scheduler: str | None = None
    security: Any = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler must be one of {SCHEDULERS} or None, got {self.scheduler!r}; "
                "for a cluster pass client=<Client or address> instead"
            )
        if self.client is not None and self.scheduler is not None:
            raise ValueError("pass either client= (a cluster) or scheduler= (local), not both")

    def local_scheduler(self, n_tasks: int) -> str:
        """The local scheduler: the one asked for, else ``"processes"`` (parsing holds
        the GIL, so threads would run it one at a time), or ``"sync"`` for a single
        task, where a pool would only add its start-up."""
        if self.scheduler is not None:
            return self.scheduler
        return "processes" if n_tasks > 1 else "sync"
